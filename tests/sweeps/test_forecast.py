"""Forecast stopping: exact on curves whose remaining fall is linear in where they are (geometric decay to a
common floor, the closed form below), and a rule that stops only what cannot beat the best finished trial."""

import math

import pytest

from pipeline.sweeps import Selection
from pipeline.sweeps.forecast import ForecastStop, forecast_final

T, FLOOR, RATE = 15, 2.0, 0.8


def geometric(y0: float) -> list[float]:
    """y(e) = m + (y0 - m) r^e, e = 1..T: what remains to fall after epoch e, y(T) - y(e) = (y(e) - m)(r^(T-e) - 1),
    is linear in y(e), so interpolating between finished trials is exact."""
    return [FLOOR + (y0 - FLOOR) * RATE ** e for e in range(1, T + 1)]


@pytest.mark.parametrize("epoch", [1, 4, 14])
def test_the_forecast_is_exact_where_the_remaining_fall_is_linear_in_the_value(epoch):
    finished = [geometric(y0) for y0 in (4.0, 9.0, 20.0)]
    for y0 in (5.0, 7.5, 19.0):  # between the finished trials at every epoch
        curve = geometric(y0)
        assert forecast_final(curve[epoch - 1], epoch, finished) == pytest.approx(curve[-1], rel=1e-12)


def test_beyond_the_finished_trials_the_nearest_ones_change_is_used():
    finished = [geometric(4.0), geometric(9.0)]
    y = geometric(30.0)[0]  # above both at epoch 1: the change of the highest one
    assert forecast_final(y, 1, finished) == pytest.approx(y + finished[1][-1] - finished[1][0])
    (only,) = finished[:1]  # one finished trial: its change, for any value
    assert forecast_final(1.0, 3, [only]) == pytest.approx(1.0 + only[-1] - only[2])


def test_a_trial_stops_once_its_forecast_score_is_worse_than_the_best_finished_objective():
    target = 4.0  # nll_gap: |y - y*|
    rule = ForecastStop(Selection(metric="nll_gap"), target_nll=target, epochs=T, grace_epochs=2)
    near, far, below = geometric(10.0), geometric(40.0), geometric(4.5)
    assert not rule.stops(far[1], 2)  # nothing has finished: nothing stops
    rule.finish(near, objective=abs(near[-1] - target) + 0.5)  # its reconstruction penalty counts in its objective
    rule.finish(geometric(20.0)[:5], objective=0.0)  # ran 5 epochs only (a resumed trial): left out
    rule.finish([math.nan] * T, objective=0.0)  # a diverged curve: left out
    assert len(rule.finished) == 1 and rule.best == pytest.approx(abs(near[-1] - target) + 0.5)
    assert not rule.stops(far[0], 1)  # before the grace epochs
    assert rule.stops(far[1], 2)  # forecast to end further from the target than the best finished one
    assert not rule.stops(far[-1], T)  # the last epoch: the trial has ended anyway
    # forecast (with the one finished trial's fall) to end nearer the target than the best objective: runs on
    assert rule.forecast_score(geometric(12.0)[1], 2) < rule.best and not rule.stops(geometric(12.0)[1], 2)
    # forecast below the target by more than the best objective: the fold at the target is seen
    assert rule.forecast_score(below[1], 2) == pytest.approx(abs(forecast_final(below[1], 2, [near]) - target))
    assert rule.stops(below[1], 2) == (rule.forecast_score(below[1], 2) > rule.best)


def test_with_the_plain_metric_the_score_is_the_forecast_itself():
    rule = ForecastStop(Selection(metric="knn_nll"), target_nll=None, epochs=T)
    low = geometric(3.0)
    rule.finish(low, objective=low[-1])
    assert rule.forecast_score(geometric(6.0)[0], 1) == pytest.approx(forecast_final(geometric(6.0)[0], 1, [low]))
    assert rule.stops(geometric(6.0)[0], 1) and not rule.stops(geometric(2.5)[0], 1)
