"""benchmarks/gpu_check.py, the prepared GPU run, runs on a CPU at small sizes (so it cannot rot)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--width", "32", "--depth", "2",
                             "--batch", "64", "--steps", "5", "--site-steps", "40", "--image-size", "8",
                             "--image-widths", "4", "8", "--ingest-rows", "30000", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(out.read_text())
    assert set(check["matmul_peak_flop_per_s"]) == {"bf16", "fp32"}
    for precision in ("fp32", "bf16"):
        step = check["train_step"][precision]
        assert step["samples_per_s"] > 0 and 0 < step["fraction_of_peak"] and step["flops_per_step"] > 0
    resume = check["kill_and_resume"]
    assert resume["child_exit"] == -9  # SIGKILLed, not a clean exit
    # killed while paused after its second announced checkpoint, and resumed from exactly that one
    assert resume["killed_at_step"] == resume["resumed_from_step"] == 10 and resume["optimiser_tensors_on_device"] > 0
    assert check["site"]["finetune"]["device"] == "cpu" and check["site"]["align"]["device"] == "cpu"
    # the fine-tune learns the site: its held-out FM loss falls below the core's on the site's points
    assert check["site"]["finetune"]["heldout_fm_site"] < check["site"]["finetune"]["heldout_fm_core"]
    # so does the adapter, and its file composed again with the core is the same site prior
    adapter = check["site"]["finetune"]["adapter"]
    assert adapter["heldout_fm_site"] < check["site"]["finetune"]["heldout_fm_core"] and adapter["device"] == "cpu"
    assert adapter["heldout_fm_loaded"] == pytest.approx(adapter["heldout_fm_site"], rel=1e-4)
    # conv autoencoders trained three ways, and a latent generator sampled and decoded into images (3 x 8 x 8)
    images = check["images"]
    assert {images[k]["device"] for k in ("plain", "align", "match", "generator")} == {"cpu"}
    assert images["generator"]["samples"] == [1000, 3 * 8 * 8] and images["generator"]["finite"]
    assert all(images[k]["seconds_per_step"] > 0 and images[k]["recon"] < 1 for k in ("plain", "align", "match"))
    # the input pipeline read every row, kept the training rows (about 90%), and is set against the bf16 step
    ingest = check["ingest"]
    assert ingest["rows_read"] == 30_000 and 0.8 * 30_000 < ingest["train_rows"] < 30_000
    assert ingest["cores_to_keep_up"] == pytest.approx(check["train_step"]["bf16"]["samples_per_s"]
                                                       / ingest["train_rows_per_s_per_core"])


@pytest.mark.slow
def test_the_kill_and_resume_child_waits_after_each_announced_checkpoint(tmp_path):
    """The victim stops at every checkpoint it announces until told to go on (a line on stdin), so the
    parent's SIGKILL lands at a known step; when its stdin ends it stops there without saving more."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, str(SCRIPT), "--child", str(folder), "--device", "cpu", "--width", "16",
                              "--depth", "1", "--batch", "16"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "saved 5\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "saved 10\n"
        rest, errors = child.communicate(timeout=120)  # closes stdin: a paused child ends now
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, errors[-3000:]
    assert rest == ""  # no checkpoint after the last announced one
    assert sorted(p.name for p in folder.iterdir()) == ["step-000005", "step-000010"]
