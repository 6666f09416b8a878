"""Per-site jobs on a real local Ray, through the real command line, on both store backends."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.datasets import la_haute_borne as lhb
from pipeline.errors import RegistryError
from pipeline.registry import Registry
from pipeline.sites.models import load_encoder, load_prior
from pipeline.storage import Store
from tests.support.processes import alive, pids_titled, poll, stdout_file
from tests.support.ray_output import ray_noise
from tests.support.sites import SITE, flowprior, publish_core, small_spec


@pytest.fixture
def core_store(local_ray, store_uri):
    return store_uri, publish_core(store_uri)


@pytest.mark.slow
def test_check_finetune_align_from_the_cli(core_store, tmp_path, capsys, mlflow_tracking):
    store_uri, core = core_store  # published before MLflow tracking was turned on
    spec = str(small_spec(tmp_path))
    registry = Registry(Store.open(store_uri))

    code, out, _ = flowprior(capsys, "site", "check", spec, "--json", "--store", store_uri, "--tag", "line=3")
    (check,) = json.loads(out)
    assert code == 0 and check["site"] == SITE and check["prior"] == core.id
    assert check["decision"] in ("reuse", "finetune", "refit") and check["fm_ratio"] > 0
    (record,) = registry.records(kind="site-check", site=SITE)
    assert record.id == check["check"] and record.config["decision"] == check["decision"]
    assert record.tags == {"line": "3"}

    # a rerun of the same step returns its record; --force runs it again
    code, out, _ = flowprior(capsys, "site", "check", spec, "--store", store_uri)
    assert code == 0 and "already ran" in out and len(registry.records(kind="site-check")) == 1
    assert flowprior(capsys, "site", "check", spec, "--force", "--store", store_uri)[0] == 0
    first, forced = registry.records(kind="site-check")
    assert first.id == record.id and forced.config["step"] == first.name and forced.name.startswith(f"{first.name}.")

    code, out, _ = flowprior(capsys, "site", "finetune", spec, "--mode", "finetune", "--store", store_uri,
                             "--tag", "line=3")
    (site_prior,) = registry.records(kind="site-prior", site=SITE)
    assert site_prior.tags == {"line": "3"}  # through the Ray task
    assert code == 0 and site_prior.parents == [core.id] and site_prior.config["mode"] == "finetune"
    assert site_prior.config["method"] == "adapter" and site_prior.config["core"] == {"id": core.id, "hash": core.hash}
    assert site_prior.config["artifact_bytes"] < core.config["artifact_bytes"] and " adapter " in out
    assert site_prior.id in out and [h["step"] for h in site_prior.config["history"]] == [30, 60]
    assert load_prior(registry, site_prior.id).latent_dim == 4
    code, out, _ = flowprior(capsys, "site", "finetune", spec, "--mode", "finetune", "--store", store_uri)
    assert code == 0 and site_prior.id in out and len(registry.records(kind="site-prior")) == 1

    code, out, _ = flowprior(capsys, "site", "align", spec, "--lambda", "2", "--store", store_uri)
    (encoder,) = registry.records(kind="encoder", site=SITE)
    assert code == 0 and encoder.aligned_to == site_prior.id and encoder.config["lambda"] == 2.0
    assert encoder.name == encoder.config["step"] and encoder.name.startswith(f"{SITE}.align.")  # named by inputs
    for name in ("recon", "l_align", "knn_nll", "spread"):
        assert encoder.metrics[name] is not None and encoder.metrics[f"baseline_{name}"] is not None
    assert encoder.metrics["l_align"] < encoder.metrics["baseline_l_align"]
    model = load_encoder(registry, encoder.id)  # the artifact, hash-checked: latents in the site prior's space
    assert model.config.latent_dim == load_prior(registry, site_prior.id).latent_dim == 4
    with pytest.raises(RegistryError, match="is a site-prior, not an encoder"):
        load_encoder(registry, site_prior.id)
    code, out, _ = flowprior(capsys, "site", "align", spec, "--lambda", "2", "--store", store_uri)
    assert code == 0 and encoder.id in out and len(registry.records(kind="encoder")) == 1  # nothing trained
    code, out, _ = flowprior(capsys, "registry", "aligned", SITE, "--json", "--store", store_uri)
    assert [r["id"] for r in json.loads(out)] == [site_prior.id]
    # the fleet view of this site agrees with the records the steps wrote
    code, out, _ = flowprior(capsys, "fleet", "status", "--json", "--store", store_uri)
    (status,) = json.loads(out)["sites"]
    assert (status["encoder"], status["aligned_to"], status["aligned_kind"], status["aligned_core"]) == (
        encoder.id, site_prior.id, "site-prior", core.id)
    assert (status["stale"], status["check"], status["decision"]) == (False, forced.id, forced.config["decision"])
    # with MLflow tracking on, every record was copied as a run, also those the site steps' Ray tasks registered
    # (the tasks get the tracking URI from the driver); `registry mirror` copies the core prior from before
    copied = {r.data.tags["flowprior.id"]: r for r in mlflow_tracking.runs()}
    assert set(copied) == {r.id for r in registry.records()} - {core.id}
    assert copied[site_prior.id].data.tags["line"] == "3" and copied[encoder.id].data.tags["flowprior.aligned_to"] == (
        site_prior.id)
    code, out, _ = flowprior(capsys, "registry", "mirror", "--store", store_uri)
    assert code == 0 and "1 record(s) copied" in out
    assert {r.data.tags["flowprior.id"] for r in mlflow_tracking.runs()} == {r.id for r in registry.records()}
    # --method full overrides the spec: a site prior stored whole, another step (nothing reused)
    code, out, _ = flowprior(capsys, "site", "finetune", spec, "--mode", "finetune", "--method", "full", "--store",
                             store_uri)
    (whole,) = [r for r in registry.records(kind="site-prior") if r.id != site_prior.id]
    assert code == 0 and whole.config["method"] == "full" and " full " in out
    assert whole.config["artifact_bytes"] > site_prior.config["artifact_bytes"]


@pytest.mark.slow
def test_site_align_from_a_shell_prints_its_own_lines_and_none_of_rays(tmp_path):
    """As a site lead runs it (its own Ray, output to a pipe): each site's lines prefixed with its site and step,
    the progress, then the table, and none of Ray's notices, warnings, forwarded lines or colours."""
    store_uri = str(tmp_path / "store")
    publish_core(store_uri)
    spec = small_spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "pipeline", "site", "align", str(spec), "--store", store_uri],
                         capture_output=True, text=True, env=env, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert ray_noise(output) == [], output
    assert re.search(rf"^\[site {SITE} align\] registered encoder-\w+: recon ", output, re.MULTILINE), output
    lines = [line for line in output.splitlines() if line.strip()]
    table = next(i for i, line in enumerate(lines) if line.startswith("site "))  # then the table, a row a site
    assert all(line.startswith(("[site ", "[sites ")) for line in lines[:table]) and len(lines) == table + 2, output
    assert lines[-1].startswith(SITE)


@pytest.mark.slow
def test_auto_mode_follows_the_check_and_align_refuses_a_missing_site_prior(local_ray, tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    publish_core(store_uri)
    reuse = str(small_spec(tmp_path, thresholds={"finetune_gain": 0.99, "refit_fm": 200.0}))
    code, out, _ = flowprior(capsys, "site", "finetune", reuse, "--store", store_uri)
    assert code == 0 and "reuse" in out and Registry(Store.open(store_uri)).records(kind="site-prior") == []

    forced = tmp_path / "forced"
    forced.mkdir()
    finetune = str(small_spec(forced, thresholds={"finetune_gain": 0.0, "refit_fm": 1e9}))
    assert flowprior(capsys, "site", "check", finetune, "--store", store_uri)[0] == 0
    code, _, err = flowprior(capsys, "site", "align", finetune, "--store", store_uri)
    assert code == 2 and "decided finetune" in err and "run `flowprior site finetune` first" in err
    assert Registry(Store.open(store_uri)).records(kind="encoder") == []


@pytest.mark.slow
def test_a_spec_whose_columns_break_the_contract_is_refused_by_name_and_order(local_ray, tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    swapped = ["power", "pitch", *lhb.FEATURES[2:]]  # as many columns, another order
    for step in ("check", "finetune", "align"):
        code, _, err = flowprior(capsys, "site", step, str(small_spec(tmp_path, columns=swapped)), "--store", store_uri)
        assert code == 2 and "feature column 1 of 10 is 'power' but the prior was fitted with 'pitch' there" in err, err
    fewer = str(small_spec(tmp_path, columns=lhb.FEATURES[:3]))
    code, _, err = flowprior(capsys, "site", "check", fewer, "--store", store_uri)
    assert code == 2 and "3 feature columns but the prior was fitted on 10; missing temperature" in err
    assert [r.kind for r in Registry(Store.open(store_uri)).records()] == ["prior"]  # nothing recorded
    code, _, err = flowprior(capsys, "site", "check", fewer, "--store", str(tmp_path / "empty"))
    assert code == 2 and "no core prior" in err


def test_a_prior_from_before_contracts_is_checked_by_column_count_with_a_warning(tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5, contract=False)
    code, _, err = flowprior(capsys, "site", "check", str(small_spec(tmp_path, columns=lhb.FEATURES[:3])),
                             "--store", store_uri)
    assert code == 2 and "has 3 feature columns" in err and "expects 10" in err
    code, out, _ = flowprior(capsys, "site", "check", str(small_spec(tmp_path)), "--store", store_uri)
    (check,) = Registry(Store.open(store_uri)).records(kind="site-check")
    assert code == 0 and "warning: the prior has no feature schema" in out
    assert check.config["contract_warnings"][0].startswith("the prior has no feature schema")


def test_a_column_in_other_units_is_checked_with_a_warning_in_the_output_and_the_record(tmp_path, capsys):
    import pyarrow.compute as pc

    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    table = pq.read_table(lhb.PARQUET, filters=[("site", "=", SITE), ("year", "=", 2015)])
    kilowatts = tmp_path / "kw.parquet"  # this site reports power in MW, the fleet in kW
    pq.write_table(table.set_column(table.schema.get_field_index("power"), "power",
                                    pc.divide(table["power"], 1000.0)), kilowatts)
    spec = small_spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["target"]["uri"] = str(kilowatts)
    spec.write_text(yaml.safe_dump(data))
    code, out, _ = flowprior(capsys, "site", "check", str(spec), "--store", store_uri)
    (check,) = Registry(Store.open(store_uri)).records(kind="site-check")
    assert code == 0 and f"[site {SITE}] warning: column power: sd" in out
    assert [w.split(":")[0] for w in check.config["contract_warnings"]] == ["column power"] * 2  # mean and sd


def _device_of_task(spec, registry, device: str, **kwargs) -> str:
    return device


@pytest.mark.slow
def test_a_gpu_share_falls_back_to_cpu_on_a_local_ray_without_gpus(local_ray, tmp_path):
    """`site finetune|align --gpu 0.25` on a laptop: the sites still run, on CPUs, and say so."""
    from types import SimpleNamespace

    from pipeline.jobs.site_tasks import site_task_resources
    from pipeline.jobs.sites import run_sites

    lines: list[str] = []
    sites = [SimpleNamespace(site="a"), SimpleNamespace(site="b")]
    assert run_sites(_device_of_task, sites, Store.open(str(tmp_path)), gpu=0.25, say=lines.append) == ["cpu", "cpu"]
    assert any("no GPU: running on CPUs" in line for line in lines)
    counted = [re.match(r"\[sites _device_of_task\] (\d)/2 sites, (\d) in flight", line) for line in lines]
    assert [m.groups() for m in counted if m] == [("1", "1"), ("2", "0")]  # the driver counts sites done
    assert site_task_resources(0.25) == {"CPU": 1.0, "GPU": 0.25} and site_task_resources() == {"CPU": 1.0}
    with pytest.raises(ValueError, match="share of one GPU"):
        run_sites(_device_of_task, sites, Store.open(str(tmp_path)), gpu=2)


def _dies_or_writes(spec, registry, device: str, **kwargs) -> str:
    import os

    if spec.site == "dies":
        os._exit(1)  # as an OOM kill or a lost node ends a worker: no exception, no traceback
    registry.store.create(f"done/{spec.site}", b"ok")
    return spec.site


@pytest.mark.slow
def test_a_crashed_site_task_does_not_abort_the_other_sites(local_ray, tmp_path):
    from types import SimpleNamespace

    from pipeline.jobs.sites import run_sites

    store, lines = Store.open(str(tmp_path)), []
    sites = [SimpleNamespace(site="dies"), SimpleNamespace(site="lives")]
    with pytest.raises(Exception, match="(?i)worker|died|crash"):
        run_sites(_dies_or_writes, sites, store, say=lines.append)
    assert store.read("done/lives") == b"ok"  # ran to its end
    assert any(line.startswith("[site dies] failed: ") for line in lines)


def test_a_check_with_too_few_held_out_points_records_nothing(tmp_path, capsys):
    import pyarrow.parquet as pq

    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    tiny = tmp_path / "tiny.parquet"
    pq.write_table(pq.read_table(lhb.PARQUET).slice(0, 40), tiny)
    spec = small_spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["target"] = {**data["target"], "uri": str(tiny), "filters": {}}
    spec.write_text(yaml.safe_dump(data))
    code, _, err = flowprior(capsys, "site", "check", str(spec), "--store", store_uri)
    assert code == 2 and "a check needs at least 20 held-out points" in err, err
    assert Registry(Store.open(store_uri)).records(kind="site-check") == []


def test_validate_reads_only_footers_holds_the_contract_and_writes_nothing(tmp_path, capsys):
    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    listing = lambda: sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*"))  # noqa: E731
    before = listing()
    good = small_spec(tmp_path)
    target_rows = pq.read_table(lhb.PARQUET, columns=["power"], filters=[("site", "=", SITE), ("year", "=", 2015),
                                                                         ("fault", "=", False)]).num_rows
    code, out, _ = flowprior(capsys, "site", "validate", str(good), "--store", store_uri)
    assert code == 0 and f"{SITE} ({good}): ok" in out, out
    assert f"would run: check: {target_rows:,} target rows" in out and "align: " in out and "lambda 1," in out

    problems = {"swapped": ({"columns": ["power", "pitch", *lhb.FEATURES[2:]]},
                            "feature column 1 of 10 is 'power' but the prior was fitted with 'pitch'"),
                "typo": ({"target": {"uri": str(lhb.PARQUET), "filters": {"site": "R8071"}}},
                         "no rows pass the filters"),
                "unknown": ({"columns": [*lhb.FEATURES, "humidity"]}, "feature column 'humidity' is not in"),
                "misspelt": ({"alignmnt": {}}, "unknown key 'alignmnt'")}
    for name, (change, message) in problems.items():
        (tmp_path / name).mkdir()
        spec = str(small_spec(tmp_path / name, **change))
        code, out, _ = flowprior(capsys, "site", "validate", str(good), spec, "--store", store_uri)
        assert code == 1 and message in out and "PROBLEMS" in out and f"{SITE} ({good}): ok" in out, (name, out)
    code, out, err = flowprior(capsys, "site", "validate", str(good), "--store", str(tmp_path / "none"), "--json")
    assert code == 2 and out == "" and f"no flowprior store at {tmp_path / 'none'}" in err
    assert listing() == before and not (tmp_path / "none").exists()  # nothing written anywhere


@pytest.mark.slow
def test_two_concurrent_checks_of_the_same_site_register_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.sites import load_site_spec
    from pipeline.sites.check import check_site

    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    spec = load_site_spec(small_spec(tmp_path))
    registry = Registry(Store.open(store_uri))
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: check_site(spec, registry, say=lambda _: None), range(2))
    assert a.id == b.id and [r.id for r in registry.records(kind="site-check")] == [a.id]


def _fails_once_by_dying_then_by_raising(spec, registry, device: str, **kwargs) -> str:
    import os
    import uuid

    store = registry.store
    store.create(f"attempts/{spec.site}/{uuid.uuid4().hex}", b"")
    attempts = len(list(store.list(f"attempts/{spec.site}")))
    if spec.site == "flaky" and attempts == 1:
        os._exit(1)  # the worker dies, as on a lost node: Ray runs the task again
    if spec.site == "broken":
        raise ValueError("bad data")  # the job's own error: never retried
    return f"{spec.site} after {attempts} attempt(s)"


@pytest.mark.slow
def test_a_dead_worker_is_retried_and_an_error_of_the_step_is_not(local_ray, tmp_path):
    from types import SimpleNamespace

    from pipeline.jobs.sites import run_sites

    store = Store.open(str(tmp_path))
    flaky = [SimpleNamespace(site="flaky")]
    assert run_sites(_fails_once_by_dying_then_by_raising, flaky, store, retries=1) == ["flaky after 2 attempt(s)"]
    with pytest.raises(ValueError, match="bad data"):
        run_sites(_fails_once_by_dying_then_by_raising, [SimpleNamespace(site="broken")], store, retries=3)
    assert len(list(store.list("attempts/broken"))) == 1


FINETUNE_STEPS, KILL_AT = 1500, 300  # the task dies once its fine-tune has reported step 300 of 1500


def reported_steps(output: str) -> list[int]:
    """The steps a site task's fine-tune of ``FINETUNE_STEPS`` reported in its ``output``, in order (its
    progress lines: ``[site R80711 finetune] 300/1500 steps (20%), 2s, ETA 8s  train_fm ...``)."""
    return [int(m) for m in re.findall(rf"\[site {SITE} finetune\] (\d+)/{FINETUNE_STEPS} steps", output)]


@pytest.mark.slow
def test_a_site_task_killed_mid_finetune_still_completes_and_registers_once(local_ray, tmp_path):
    """The kill is timed by the fine-tune itself: the task's worker is SIGKILLed as soon as its own progress
    lines (which Ray writes, unbuffered, to the worker's log file) report step ``KILL_AT``, so it dies
    mid-training however fast this machine trains; the retry trains again and registers one site prior."""
    import signal
    import threading
    from datetime import datetime, timezone

    from pipeline.jobs.sites import run_sites
    from pipeline.sites import load_site_spec
    from pipeline.sites.finetune import finetune_site

    store_uri = str(tmp_path / "store")
    publish_core(store_uri, steps=5)
    spec = load_site_spec(small_spec(tmp_path, finetune={"steps": FINETUNE_STEPS, "log_every": 100}))
    lines: list[str] = []
    result: dict = {}

    def run() -> None:
        try:
            result["records"] = run_sites(finetune_site, [spec], Store.open(store_uri), say=lines.append,
                                          retries=2, mode="finetune")
        except Exception as error:  # noqa: BLE001 - reported by the assertions below
            result["error"] = error

    def reached_kill_step() -> tuple[int, Path] | None:  # the task's worker and its log, once it reported KILL_AT
        for pid in pids_titled("ray::run_step"):
            log = stdout_file(pid)
            if log is not None and any(step >= KILL_AT for step in reported_steps(log.read_text(errors="replace"))):
                return pid, log
        return None

    runner = threading.Thread(target=run)
    runner.start()
    victim = poll(reached_kill_step, lambda found: found is not None or not runner.is_alive(), timeout=900)
    assert victim is not None, f"the fine-tune never reported step {KILL_AT} from a running task: {result} {lines}"
    killed, log = victim
    os.kill(killed, signal.SIGKILL)  # a real process death, as on a lost node or an OOM kill
    killed_at = datetime.now(timezone.utc)
    assert not poll(lambda: alive(killed), lambda running: not running, timeout=60), f"worker {killed} outlived SIGKILL"
    # everything the dead worker printed is in its log: it had not finished its fine-tune
    output = log.read_text(errors="replace")
    begin = output.rfind(f", {FINETUNE_STEPS} steps from ")  # where this fine-tune's lines start
    assert begin >= 0, output[-2000:]
    run_output = output[begin:]
    steps = reported_steps(run_output)
    assert KILL_AT <= steps[-1] < FINETUNE_STEPS and "registered" not in run_output, run_output[-2000:]
    print(f"worker {killed} killed after reporting step {steps[-1]} of {FINETUNE_STEPS}")
    runner.join(timeout=900)
    assert not runner.is_alive() and "error" not in result, (result, lines)
    (site_prior,) = Registry(Store.open(store_uri)).records(kind="site-prior")  # registered once
    assert result["records"][0].id == site_prior.id and site_prior.metrics["steps"] == FINETUNE_STEPS
    assert [h["step"] for h in site_prior.config["history"]] == list(range(100, FINETUNE_STEPS + 1, 100))
    assert datetime.fromisoformat(site_prior.created_at) > killed_at  # the retry trained and registered it
