"""What a Tune experiment of a sweep leaves once every trial has ended: its trials as JSON, beside Tune's state.

Tune keeps an experiment's state as pickles, and only resuming an *interrupted* experiment needs them
(``--trust-store-state``). When every trial of an experiment has ended, its trials' settings and reports
are published as ``<store>/ray-runs/<name>/flowprior-trials.json`` (create-if-absent). A later sweep that
needs the same experiment -- the lambda = 0 baselines, which every sweep of the same sites and length
shares, or a sweep whose record a crash kept from being written -- reads them from there and runs
nothing. Reading them runs no code: it is JSON, trusted as much as a registry record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import RegistryError
from pipeline.storage import AlreadyExists, Store
from pipeline.storage.layout import RAY_RUNS

FILE = "flowprior-trials.json"
FORMAT = 1


@dataclass(frozen=True)
class EndedTrial:
    """One trial of an experiment that ended: its folder, Tune config and every report it made."""

    folder: str  # the trial's folder in the experiment, ``<site>-<trial id>``
    config: dict  # Tune's config: the grid point and any sampled settings (see ``trial.settings_of``)
    rows: list[dict[str, float]]  # per report, in order: the ``keys`` it had (``epoch`` an int)

    @classmethod
    def of(cls, result, keys: tuple[str, ...]) -> "EndedTrial":
        """The trial of a Tune ``Result``, keeping the columns ``keys`` of its reports."""
        frame = result.metrics_dataframe
        columns = [k for k in keys if k in frame.columns]
        rows = [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in frame[columns].to_dict("records")]
        return cls(Path(result.path).name, dict(result.config), rows)


def key_of(name: str) -> str:
    """The store key of experiment ``name``'s ended trials."""
    return f"{RAY_RUNS}/{name}/{FILE}"


def save(store: Store, name: str, trials: list[EndedTrial]) -> None:
    """Publish the trials of experiment ``name``, all of which ended. If a run of the same experiment
    published them first, that copy stays (both ran the same settings on the same data)."""
    data = json.dumps({"format": FORMAT, "experiment": name, "trials": [asdict(t) for t in trials]},
                      sort_keys=True).encode()
    try:
        store.create(key_of(name), data)
    except AlreadyExists:
        pass


def load(store: Store, name: str) -> list[EndedTrial] | None:
    """The trials of experiment ``name`` if it ran to its end before, else ``None`` (never run, or interrupted).
    A file that is not such a list is a ``RegistryError`` naming it."""
    key = key_of(name)
    if not store.exists(key):
        return None
    try:
        data = json.loads(store.read(key))
        if data.get("format") != FORMAT or data.get("experiment") != name:
            raise ValueError(f"format {data.get('format')!r} of experiment {data.get('experiment')!r}, expected "
                             f"format {FORMAT} of {name!r}")
        trials = [EndedTrial(t["folder"], t["config"], t["rows"]) for t in data["trials"]]
        for t in trials:
            if not (isinstance(t.folder, str) and isinstance(t.config, dict) and isinstance(t.rows, list)
                    and t.rows and all(isinstance(r, dict) and "epoch" in r for r in t.rows)):
                raise ValueError(f"trial {t.folder!r} has no folder, config or reports")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RegistryError(f"{store.uri_of(key)}: not the trials of a finished experiment ({error}); delete the "
                            f"folder {store.uri_of(f'{RAY_RUNS}/{name}')} to run the experiment again") from None
    return trials
