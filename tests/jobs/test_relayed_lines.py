"""A worker's lines relayed to the driver through the store: said while the block runs, in order, once."""

import threading

from pipeline.jobs.relayed_lines import LineDrop, relayed
from pipeline.storage import Store


def test_lines_arrive_while_the_block_runs_in_order_and_earlier_attempts_are_not_said_again(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    folder = "ray-runs/fit/lines"
    LineDrop(store, folder).say("[prior fit] an earlier attempt's line")
    said: list[str] = []
    arrived = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        arrived.set()

    drop = LineDrop(store, folder)  # as a worker holds it (pickled into its config)
    with relayed(store, folder, say, poll_s=0.01):
        drop.say("[prior fit] 250/2000 steps")
        assert arrived.wait(timeout=30)  # said while the fit still runs, not only at its end
        assert said == ["[prior fit] 250/2000 steps"]
        for step in (500, 750, 1000):
            drop.say(f"[prior fit] {step}/2000 steps")
    assert said == [f"[prior fit] {step}/2000 steps" for step in (250, 500, 750, 1000)]  # the rest at the end, once
    assert len(store.list(folder)) == 5  # every line kept beside the run's checkpoints


def test_a_line_the_store_refuses_is_lost_and_the_job_goes_on(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    (tmp_path / "store" / "ray-runs").mkdir(parents=True)
    (tmp_path / "store" / "ray-runs" / "fit").write_text("a file where the run's folder should be")
    LineDrop(store, "ray-runs/fit/lines").say("[prior fit] 250/2000 steps")  # no exception
