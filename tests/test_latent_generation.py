"""benchmarks/latent_generation.py, the paper's protocol in miniature, runs end to end at tiny sizes (so it cannot
rot) on the data its packages ship, and writes the results file its closing numbers come from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latent_generation.py"
ENCODERS = {"plain", "kl", "align-text", "match-text", "align-feature", "match-feature"}


@pytest.mark.slow
def test_the_latent_generation_benchmark_runs_and_reports_every_encoder_over_seeds(tmp_path):
    out = tmp_path / "latent_generation.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--seeds", "0", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["encoders"]) == ENCODERS and set(report["projections"]) == {"random", "pca", "pool"}
    for name, entry in report["encoders"].items():
        assert [run["seed"] for run in entry["seeds"]] == [0, 1], name
        for metric in ("rfid", "psnr", "gfid", "precision", "recall", "coverage"):
            values = [run[metric] for run in entry["seeds"]]
            assert entry[metric] == pytest.approx(sum(values) / 2), (name, metric)  # the seeds' mean
            assert entry[f"{metric}_sd"] == pytest.approx(abs(values[0] - values[1]) / 2, abs=1e-9)
        assert entry["rfid"] >= 0 and entry["gfid"] >= 0 and 0 <= entry["coverage"] <= 1
    # each swept encoder's weight is the sweep point with the lowest validation gFID
    for name, points in report["sweeps"].items():
        best = min(points, key=lambda w: points[w]["gfid"])
        assert float(best) == pytest.approx(report["weights"][name]), name
    assert report["weights"]["plain"] == 0.0 and report["text_embeddings"]["dim"] == 384
    assert report["text_embeddings"]["rows"] > 29_000 and 0 < report["classifier"]["test_accuracy"] <= 1
