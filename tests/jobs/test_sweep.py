"""Sweeps as real Ray Tune experiments on a real local Ray: from the command line on both store backends,
the choice reproduced by `site align --from-sweep`, and an interrupted sweep resumed where it stopped."""

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UntrustedState
from pipeline.jobs.sweep import SweepInterrupted, grid_points, run_sweep, settings_of
from pipeline.registry import Registry
from pipeline.sites import load_site_spec
from pipeline.sites.finetune import finetune_site
from pipeline.storage import Store
from pipeline.sweeps import Selection, load_sweep_spec
from pipeline.sweeps.forecast import ForecastStop
from tests.support.sites import flowprior, publish_core, small_spec
from tests.support.tfevents import merged

SITES = ("R80711", "R80721")
LAMBDAS = [0.001, 0.01, 0.1, 1.0]


def sweep_spec(tmp_path: Path, **overrides) -> Path:
    """A CI-sized sweep over two turbines: 4 lambdas, 80 steps in 4 epochs of 20."""
    sites = [small_spec(tmp_path, site, alignment={"lambda": 0.01, "steps": 60, "log_every": 30,
                                                   "eval_points": 500}).name for site in SITES]
    data = {"name": "ci", "sites": sites, "space": {"lambda": {"grid": LAMBDAS}}, "steps": 80, "epoch_steps": 20,
            "scheduler": {"type": "asha", "grace_epochs": 1, "reduction_factor": 2}, "select": {"metric": "knn_nll"},
            **overrides}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the space's order is the trials' order
    return path


def check_record(record, spec) -> None:
    """Every trial is there with its epochs in order; each site's choice is the lowest recomputed objective
    among its trials that ran to the end; the compute accounting adds up."""
    trials = record.config["trials"]
    assert sorted((t["site"], t["config"]["lam"]) for t in trials) == sorted((s, x) for s in SITES for x in LAMBDAS)
    selection = Selection(**record.config["spec"]["select"])
    for t in trials:
        assert [h["epoch"] for h in t["history"]] == list(range(1, t["epochs"] + 1))  # never restarted
        assert t["completed"] == (t["epochs"] == spec.epochs)
        base = record.config["baselines"][t["site"]]["history"]
        target = record.config["choices"][t["site"]]["target_knn_nll"]
        for h in t["history"]:  # the objective ASHA ranked by: against the baseline at the same epoch
            baseline = selection.reconstruction(base[h["epoch"] - 1])
            assert h["objective"] == pytest.approx(selection.objective(h, baseline, target))
    for site in SITES:
        done = [t for t in trials if t["site"] == site and t["completed"]]
        best = min(done, key=lambda t: (t["final"]["objective"], t["config"]["lam"]))
        choice = record.config["choices"][site]
        assert choice["trial"] == best["trial"] and choice["lam"] == best["config"]["lam"]
        assert set(record.config["pareto"][site]) <= {t["trial"] for t in done}
        assert best["trial"] in record.config["pareto"][site] or not choice["feasible"]
    assert record.metrics["trial_epochs"] == sum(t["epochs"] for t in trials)
    assert record.metrics["full_epochs"] == len(trials) * spec.epochs
    assert record.metrics["baseline_epochs"] == len(SITES) * spec.epochs


def test_trials_follow_the_grid_as_listed_with_the_sites_interleaved(tmp_path):
    spec = load_sweep_spec(sweep_spec(tmp_path, space={"lambda": {"grid": [0.1, 0.01]}, "draws": {"grid": [2, 8]},
                                                       "lr": {"loguniform": [1e-4, 1e-2]}}))
    points = grid_points(spec, list(SITES))
    assert [(p["lam"], p["draws"], p["site"]) for p in points] == [
        (lam, draws, site) for lam in (0.1, 0.01) for draws in (2, 8) for site in SITES]
    assert "lr" not in points[0]  # sampled per trial by Tune, not part of the grid
    assert settings_of({"point": points[1], "lr": 0.001}) == {"lam": 0.1, "draws": 2, "site": SITES[1], "lr": 0.001}
    assert grid_points(spec, ["a"], {"lam": 0.0}) == [{"lam": 0.0, "site": "a"}]  # the baselines


@pytest.mark.slow
def test_a_sweep_from_the_cli_records_a_choice_per_site_that_align_reproduces(local_ray, store_uri, tmp_path, capsys,
                                                                             mlflow_tracking):
    core = publish_core(store_uri)
    path = sweep_spec(tmp_path, space={"lambda": {"grid": LAMBDAS}, "mode": {"grid": ["match"]}})  # distribution
    spec = load_sweep_spec(path)  # matching: its auxiliary flow is saved and resumed with every trial's checkpoint
    registry = Registry(Store.open(store_uri))
    # the first site has a site prior stored as an adapter of the core: its trials align against core + adapter
    adapted = finetune_site(load_site_spec(tmp_path / f"{SITES[0]}.yaml"), registry, mode="finetune",
                            say=lambda _: None)
    assert adapted.config["method"] == "adapter" and adapted.config["core"] == {"id": core.id, "hash": core.hash}

    code, out, err = flowprior(capsys, "sweep", str(path), "--store", store_uri, "--json", "--report",
                               str(tmp_path / "report"), "--tag", "campaign=q4")
    assert code == 0, err
    answer = json.loads(out)
    (record,) = registry.records(kind="sweep")
    assert answer["sweep"] == record.id and set(answer["choices"]) == set(SITES)
    assert record.parents == sorted([core.id, adapted.id]) and record.name.startswith("ci-")
    assert record.config["choices"][SITES[0]]["prior"] == adapted.id
    assert {c["prior"] for s, c in record.config["choices"].items() if s != SITES[0]} == {core.id}
    check_record(record, spec)
    assert record.metrics["trial_epochs"] < record.metrics["full_epochs"]  # ASHA stopped some trials early
    assert Store.open(store_uri).exists(f"ray-runs/{record.name}/tuner.pkl")  # Tune's experiment lives in the store
    assert record.tags == {"campaign": "q4"}
    # every trial's metrics as TensorBoard events in its trial folder, one point per epoch it ran
    store = Store.open(store_uri)
    tree = store.list_tree(f"ray-runs/{record.name}")
    for trial in record.config["trials"]:
        folder = next(k.split("/")[0] for k in tree if k.split("/")[0].endswith(trial["trial"]))
        files = {k: store.read(f"ray-runs/{record.name}/{k}") for k in tree
                 if k.startswith(f"{folder}/events.out.tfevents")}
        recon = merged(files)["ray/tune/recon"]
        assert len(recon) == trial["epochs"], trial["trial"]
    # trials started in the worker processes of trials that ended (reused actors), not one new process each
    pids = {json.loads(line)["pid"] for k in tree if k.endswith("/result.json")
            for line in store.read(f"ray-runs/{record.name}/{k}").decode().splitlines()}
    assert len(pids) < len(record.config["trials"]), pids
    # and each trial as an MLflow run (Tune's MLflow callback; tracking is on here): its settings, an epoch per step
    runs = {r.data.tags["trial_name"]: r for r in mlflow_tracking.runs(sweep=spec.name, experiment=record.name)}
    assert len(runs) == len(record.config["trials"])
    for trial in record.config["trials"]:
        run = next(r for name, r in runs.items() if name.endswith(trial["trial"].rsplit("-", 1)[1]))  # trial id
        assert run.data.tags["campaign"] == "q4" and run.data.params["point/site"] == trial["site"]
        assert len(mlflow_tracking.history(run, "recon")) == trial["epochs"], trial["trial"]
    assert mlflow_tracking.runs(id=record.id)  # the sweep's record, copied
    page = (tmp_path / "report" / "sweep.html").read_text()
    assert (tmp_path / "report" / "sweep_pareto.png").stat().st_size > 10_000
    assert all(record.config["choices"][s]["trial"] in page for s in SITES)

    code, out, _ = flowprior(capsys, "sweep", str(path), "--store", store_uri)  # the same sweep: nothing reruns
    assert code == 0 and record.id in out and len(registry.records(kind="sweep")) == 1

    site_spec = str(tmp_path / f"{SITES[0]}.yaml")
    code, out, err = flowprior(capsys, "site", "align", site_spec, "--from-sweep", record.id, "--store", store_uri)
    assert code == 0, err
    (encoder,) = registry.records(kind="encoder")
    choice = record.config["choices"][SITES[0]]
    assert encoder.parents == [choice["prior"], record.id] and encoder.aligned_to == choice["prior"]
    assert encoder.config["lambda"] == choice["lam"] and encoder.config["align"]["steps"] == spec.steps
    assert choice["mode"] == encoder.config["align"]["mode"] == "match"
    for name in ("recon", "recon_median", "knn_nll", "spread"):  # same seed, same settings: the trial's numbers
        assert encoder.metrics[name] == pytest.approx(choice[name], rel=1e-5), name
    assert record.id in [r.id for r in registry.lineage(encoder.id)]

    other = str(small_spec(tmp_path, "R80736"))
    code, _, err = flowprior(capsys, "site", "align", other, "--from-sweep", record.id, "--store", store_uri)
    assert code == 2 and f"did not sweep site R80736 (it swept {', '.join(SITES)})" in err


@pytest.mark.slow
def test_forecast_stopping_stops_in_tune_what_its_rule_stops_and_nothing_else(local_ray, tmp_path):
    """One trial at a time, so each site's trials run in the listed order: replaying the rule on the trials'
    recorded numbers (each site's finished trials feeding it in that order) gives every trial's epochs."""
    store_uri = str(tmp_path / "store")
    publish_core(store_uri)
    order = [1.0, 0.1, 0.01, 0.001]  # the most aligned first: it sets the bar the others are forecast against
    spec = load_sweep_spec(sweep_spec(tmp_path, space={"lambda": {"grid": order}}, max_concurrent=1,
                                      scheduler={"type": "forecast", "grace_epochs": 1}))
    record = run_sweep(spec, Store.open(store_uri), say=lambda line: None).record
    check_record(record, spec)
    assert record.metrics["trial_epochs"] < record.metrics["full_epochs"]  # it stopped trials early
    for site in SITES:
        trials = {t["config"]["lam"]: t for t in record.config["trials"] if t["site"] == site}
        rule = ForecastStop(spec.select, record.config["choices"][site]["target_knn_nll"], spec.epochs, 1)
        for lam in order:
            history = trials[lam]["history"]
            stops = [rule.stops(h["knn_nll"], h["epoch"]) for h in history]
            assert stops == [False] * (len(history) - 1) + [len(history) < spec.epochs], (site, lam, stops)
            if len(history) == spec.epochs:
                rule.finish([h["knn_nll"] for h in history], history[-1]["objective"])


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_where_it_stopped(local_ray, tmp_path):
    from ray import tune

    store_uri = str(tmp_path / "store")
    publish_core(store_uri)
    space = {"lambda": {"grid": LAMBDAS}, "lr": {"loguniform": [5e-4, 2e-3]}}  # lr: drawn by Tune per trial
    spec = load_sweep_spec(sweep_spec(tmp_path, scheduler={"type": "fifo"}, space=space))
    store = Store.open(store_uri)
    lines = []

    def interrupt_after_two_trials(line: str) -> None:  # Ctrl+C, delivered while Tune runs the main experiment
        lines.append(line)
        if "baseline" not in line and "] 2/8 " in line:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SweepInterrupted, match="rerun the same command to resume"):
        run_sweep(spec, store, say=interrupt_after_two_trials)
    (experiment,) = [p for p in (tmp_path / "store" / "ray-runs").iterdir() if "baseline" not in p.name]
    saved = tune.ExperimentAnalysis(str(experiment)).trials
    ended = {t.trial_id for t in saved if t.status == "TERMINATED"}
    assert 2 <= len(ended) < 8
    logs = {t.trial_id: (Path(t.path) / "result.json").read_bytes() for t in saved if t.trial_id in ended}
    assert Registry(store).records(kind="sweep") == []

    with pytest.raises(UntrustedState, match="rerun with --trust-store-state"):  # no unpickling unless asked
        run_sweep(spec, store, say=lines.append)
    lines.clear()
    result = run_sweep(spec, store, say=lines.append, trust_store_state=True)
    record = result.record
    assert result.ran and record.id in result.summary()
    check_record(record, spec)
    assert record.metrics["completed"] == 8  # FIFO: every trial ran to the end
    rates = [t["config"]["lr"] for t in record.config["trials"]]
    assert all(5e-4 <= lr <= 2e-3 for lr in rates) and len(set(rates)) == 8
    resumed = [line for line in lines if re.search(r"\] [3-8]/8 .*: ran to the end", line)]  # counting on
    assert len(resumed) == 8 - len(ended) and "picking up the Tune experiment" in "".join(lines)
    assert not any("-baseline-" in line and "ran to the end" in line for line in lines)  # baselines kept
    for t in tune.ExperimentAnalysis(str(experiment)).trials:
        if t.trial_id in ended:  # finished before the interruption: not run again
            assert (Path(t.path) / "result.json").read_bytes() == logs[t.trial_id]


@pytest.mark.slow
def test_a_later_sweep_over_the_same_sites_reuses_the_finished_baselines_without_unpickling(local_ray, tmp_path):
    """A finished experiment is not an interrupted one: a second sweep over the same sites and length (another
    search space, or the same one under another --name) shares the first one's baselines, which are read back
    from the JSON the finished experiment left, never from Tune's pickles (no --trust-store-state needed)."""
    store_uri = str(tmp_path / "store")
    publish_core(store_uri)
    store = Store.open(store_uri)
    tiny = {"steps": 40, "scheduler": {"type": "fifo"}}
    first = run_sweep(load_sweep_spec(sweep_spec(tmp_path, space={"lambda": {"grid": [0.1]}}, **tiny)), store,
                      say=lambda line: None).record
    for space, name in (({"lambda": {"grid": [0.01]}}, None), ({"lambda": {"grid": [0.1]}}, "ci-again")):
        lines = []
        later = run_sweep(load_sweep_spec(sweep_spec(tmp_path, space=space, **tiny)), store, say=lines.append,
                          name=name)
        assert later.ran and later.record.name != first.name and later.record.name == (name or later.record.name)
        assert later.record.config["baselines"] == first.config["baselines"]  # the same runs, not new ones
        assert not any(re.search(r"\[sweep ci-baseline-\w+\] \d+/\d+ trials", line) for line in lines), lines
        assert any(re.search(r"ci-baseline-\w+ ran to its end before: reusing its 2 trials", line) for line in lines)
        assert not any("picking up" in line for line in lines), lines  # nothing restored from Tune's pickles
        assert later.record.metrics["completed"] == len(SITES)


def test_a_damaged_record_of_a_finished_experiment_is_an_error_naming_it(tmp_path):
    from pipeline.errors import RegistryError
    from pipeline.jobs.sweep import finished

    store = Store.open(str(tmp_path / "store"))
    assert finished.load(store, "ci-baseline-0") is None  # never ran (or interrupted): Tune's state decides
    store.create(finished.key_of("ci-baseline-0"), b'{"format": 1, "experiment": "ci-baseline-0", "trials": [{}]}')
    with pytest.raises(RegistryError, match=r"ray-runs/ci-baseline-0/flowprior-trials.json: not the trials of a "
                                            r"finished experiment .*delete the folder .*ray-runs/ci-baseline-0"):
        finished.load(store, "ci-baseline-0")


def test_forecast_scheduling_starts_a_trial_of_a_site_with_none_running_then_one_that_can_be_forecast(tmp_path):
    from ray.tune.experiment import Trial

    from pipeline.jobs.sweep.scheduling import PerSiteForecast

    spec = load_sweep_spec(sweep_spec(tmp_path, scheduler={"type": "forecast"}))
    scheduler = PerSiteForecast(spec, {site: None for site in SITES})
    trials = [Trial("trial", config={"point": point}, stub=True) for point in grid_points(spec, list(SITES))]

    class Controller:  # what a scheduler asks Tune's controller for here: the trials, in the grid's order
        def get_trials(self):
            return trials

    a, b = SITES
    assert [settings_of(t.config)["site"] for t in trials[:4]] == [a, b, a, b]
    trials[0].status = Trial.RUNNING  # a's first trial: b's goes next
    assert scheduler.choose_trial_to_run(Controller()) is trials[1]
    trials[1].status = Trial.RUNNING  # a trial of each site runs, none finished: the next in order
    assert scheduler.choose_trial_to_run(Controller()) is trials[2]
    scheduler.rules[b].finish([1.0] * spec.epochs, objective=1.0)  # b's first trial ran to the end
    trials[1].status = Trial.TERMINATED  # b has no trial running: its next goes, before a's second
    assert scheduler.choose_trial_to_run(Controller()) is trials[3]
    trials[3].status = Trial.RUNNING  # both sites run a trial: b's next (it can be forecast) before a's second
    assert scheduler.choose_trial_to_run(Controller()) is trials[5]
