"""Progress lines: counts, shares and an ETA from the pace so far; rewritten in place only on a terminal."""

import io

import pytest

from pipeline.progress import Progress, duration, status


@pytest.mark.parametrize("seconds, said", [(0, "0s"), (44.6, "45s"), (453, "7m33s"), (7500, "2h05m")])
def test_durations_read_as_people_say_them(seconds, said):
    assert duration(seconds) == said


def test_the_eta_projects_the_mean_pace_over_what_is_left():
    assert status(300, 2000, 60.0, "steps") == "300/2000 steps (15%), 1m00s, ETA 5m40s"  # 1700 left at 5 per s
    assert status(0, 10, 5.0) == "0/10 (0%), 5s"  # no pace yet: no ETA
    assert status(10, 10, 5.0, "sites") == "10/10 sites (100%), 5s"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_and_one_rewritten_line_on_it():
    clock = iter([0.0, 10.0, 10.05, 20.0, 30.0]).__next__
    lines: list[str] = []
    plain = Progress("fit", 4, "steps", say=lines.append, live=True, stream=io.StringIO(), clock=clock)
    plain.update(1, "loss 0.5")
    assert lines == ["[fit] 1/4 steps (25%), 10s, ETA 30s  loss 0.5"]  # not a terminal: a plain line

    clock = iter([0.0, 10.0, 10.05, 20.0]).__next__
    terminal = Terminal()
    live = Progress("fit", 3, "steps", say=lines.append, live=True, stream=terminal, clock=clock)
    live.update(1)
    live.update(2)  # 0.05 s later: not redrawn
    live.update(3)  # the last one always is, and ends the line
    assert terminal.getvalue() == "\r\x1b[K[fit] 1/3 steps (33%), 10s, ETA 20s\r\x1b[K[fit] 3/3 steps (100%), 20s\n"
    assert len(lines) == 1


def test_a_fleet_prints_one_line_per_site_and_its_progress_every_tenth_or_one_line_in_place():
    from pipeline.progress import FleetProgress

    now = [0.0]
    lines: list[str] = []
    fleet = FleetProgress("site run", 20, say=lines.append, live=True, stream=io.StringIO(), clock=lambda: now[0])
    for k in range(20):  # a site a second
        now[0] = k + 1.0
        fleet.finished(f"[site s{k}] done", failed=k == 3)
    progress = [line for line in lines if line.startswith("[site run]")]
    assert [line for line in lines if not line.startswith("[site run]")] == [f"[site s{k}] done" for k in range(20)]
    assert len(progress) == 10 and progress[0] == "[site run] 2/20 sites, 18 in flight, 2s, ETA 18s"
    assert progress[-1] == "[site run] 20/20 sites, 1 failed, 0 in flight, 20s"  # no ETA once done

    terminal = Terminal()
    clock = iter([0.0, 4.0, 8.0]).__next__
    fleet = FleetProgress("site run", 2, say=lines.append, live=True, stream=terminal, clock=clock)
    fleet.finished("[site a] done")
    fleet.finished("[site b] done")
    assert terminal.getvalue() == ("\r\x1b[K[site a] done\n[site run] 1/2 sites, 1 in flight, 4s, ETA 4s"
                                   "\r\x1b[K[site b] done\n[site run] 2/2 sites, 0 in flight, 8s\n")
