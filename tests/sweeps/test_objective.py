"""The sweep objective, the per-site choice and the Pareto front, against hand computations and brute force."""

import itertools
import math
import random
import re

import pytest

from pipeline.sweeps import Selection, choose, pareto_front


def test_objective_is_the_score_plus_a_penalty_beyond_the_reconstruction_bound():
    s = Selection(metric="knn_nll", recon="mean", recon_tolerance=0.1, penalty=100)
    inside = {"recon": 1.05, "recon_median": 9.0, "knn_nll": 4.0}
    outside = {"recon": 1.30, "recon_median": 9.0, "knn_nll": 3.0}
    assert s.objective(inside, 1.0, None) == 4.0 and s.feasible(inside, 1.0)
    assert s.objective(outside, 1.0, None) == pytest.approx(3.0 + 100 * math.log(1.30 / 1.10))
    assert not s.feasible(outside, 1.0)
    gap = Selection(metric="nll_gap", recon="median", recon_tolerance=1.0)  # penalty 10 nats per e-fold
    assert gap.objective(outside, 5.0, target_nll=4.25) == pytest.approx(1.25)  # 9 <= 2 x 5: no penalty
    assert gap.objective(outside, 4.0, target_nll=4.25) == pytest.approx(1.25 + 10 * math.log(9 / 8))
    with pytest.raises(ValueError, match="needs the target's own kNN NLL"):
        gap.score(outside, None)


def test_the_choice_is_the_lowest_objective_among_trials_that_ran_to_the_end():
    trial = lambda lam, objective, completed: {"config": {"lam": lam}, "final": {"objective": objective},  # noqa: E731
                                               "completed": completed, "trial": f"t{lam}"}
    trials = [trial(0.1, 5.0, True), trial(1.0, 1.0, False), trial(0.01, 4.0, True), trial(0.03, 4.0, True)]
    assert choose(trials)["trial"] == "t0.01"  # 1.0 stopped early; 0.01 and 0.03 tie: the smaller lambda
    assert choose([trial(1.0, 1.0, False)]) is None


def test_the_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.choice([1, 2, 3, 4]) + rng.random() * 0.1, rng.choice([1.0, 2.0, 3.0])) for _ in range(12)]
        dominated = {i for i, j in itertools.permutations(range(len(points)), 2)
                     if points[j][0] <= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i]}
        front = pareto_front(points)
        assert set(front) == set(range(len(points))) - dominated
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_the_sweep_summary_escapes_every_record_value():
    from pipeline.registry import Record
    from pipeline.sweeps.report import summary

    evil = "<script>alert(1)</script>"
    record = Record.new("sweep", name="s1", metrics={k: evil for k in (
        "trials", "completed", "trial_epochs", "full_epochs", "compute_fraction", "baseline_epochs")},
        config={"spec": {"select": {}, "space": {"lambda": {"grid": [evil]}}, "scheduler": {"type": evil}}})
    page = summary(record)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_the_choices_table_shows_null_and_missing_numbers_as_n_a():
    from pipeline.registry import Record
    from pipeline.sweeps.report import choices_table

    choice = {"mode": "align", "lam": 0.004, "lr": 1e-3, "draws": 4, "steps": 12345, "recon": None,
              "objective": 0.123456, "feasible": True, "trial": "t1"}  # a NaN recon stored as null; the rest missing
    cells = re.findall(r"<td>(.*?)</td>", choices_table(Record.new("sweep", config={"choices": {"s1": choice}})))
    assert cells == ["s1", "align", "0.004", "0.001", "4", "12345", *["n/a"] * 6, "-", "n/a", "0.1235", "yes", "t1"]
