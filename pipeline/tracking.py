"""MLflow, optional: fits, sweep trials and registry records as runs on a team's MLflow server.

Off unless ``--mlflow URI`` is given or ``$MLFLOW_TRACKING_URI`` is set (the variable MLflow's own
tools read); it needs ``pip install 'flowprior[mlflow]'``. Everything goes to the experiment
``$MLFLOW_EXPERIMENT_NAME`` (default ``flowprior``), created on first use:

- a **prior fit** is one run named after its Ray run (tag ``flowprior.run``; a resumed fit continues
  the same run): its settings as params, rank 0's metrics at every report, and at the end the tag
  ``flowprior.registered`` with the record id;
- a **sweep** trial is one run, written by Ray Tune's ``MLflowLoggerCallback``: the trial's settings
  as params, every epoch's metrics, tagged with the sweep (``flowprior.sweep``);
- every **registered record** is mirrored as one finished run named by its id, tagged
  ``flowprior.id``, ``.kind``, ``.site``, ``.parents``, ``.aligned_to``, ``.fingerprint``,
  ``.artifact`` (the artifact's URI in the store) and ``.name``, plus the record's own tags as they
  are; its numeric metrics as metrics and its scalar config as params. ``flowprior registry
  mirror`` copies the records MLflow does not have yet (after an outage, or when a team starts).

The registry stays the source of truth: MLflow gets a copy, and a copy that fails only warns. A
tracking server that does not answer when a fit or sweep starts is an error, before anything runs.
MLflow's client retries a dead server for minutes by default; here it tries 3 times with a 10 s
timeout unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise,
and it prints no run links to stdout (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``), which is the
commands' own (``--json``); the prior fit says where its run is.
Credentials come from ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` or ``_TOKEN``, never from the URI
(a sweep's callback is saved with the experiment in the store).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from pipeline.errors import TrackingError, TrackingUnreachable
from pipeline.registry import Registry
from pipeline.registry.records import RESERVED_TAG_PREFIX
from pipeline.storage.uris import redact

if TYPE_CHECKING:
    from pipeline.registry.records import Record
    from pipeline.storage import Store

log = logging.getLogger(__name__)

URI_ENV, EXPERIMENT_ENV, DEFAULT_EXPERIMENT = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "flowprior"
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # stdout is the commands' (--json)
TAG = RESERVED_TAG_PREFIX
BATCH_PARAMS, PARAM_CHARS = 100, 500  # MLflow's log_batch takes 100 params; longer values are not settings


_EXPERIMENTS: dict["Tracking", str] = {}  # experiment ids this process looked up


def scalars(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``values`` (nested dicts flattened to ``a.b``), as MLflow metrics."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def params(values: dict, prefix: str = "") -> dict[str, str]:
    """The scalar settings of ``values`` (nested dicts flattened to ``a.b``; lists and long text left out)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(params(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            if len(text := str(value)) <= PARAM_CHARS:
                out[f"{prefix}{key}"] = text
    return out


@dataclass(frozen=True)
class Tracking:
    """Where runs go: an MLflow tracking ``uri`` (no credentials in it) and an ``experiment`` name."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self) -> None:
        if "@" in urlsplit(self.uri).netloc:
            raise TrackingError(f"MLflow URI {redact(self.uri)}: URIs must not embed credentials; use "
                                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")

    @classmethod
    def from_env(cls) -> Tracking | None:
        """The tracking ``$MLFLOW_TRACKING_URI`` asks for, or None when it is unset."""
        uri = os.environ.get(URI_ENV, "").strip()
        return cls(uri, os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT) if uri else None

    def env(self) -> dict[str, str]:
        """The environment variables that carry this tracking to another process (a Ray task)."""
        return {URI_ENV: self.uri, EXPERIMENT_ENV: self.experiment}

    def __str__(self) -> str:
        return f"MLflow {redact(self.uri)} (experiment {self.experiment})"

    def client(self):
        for name, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise TrackingError(f"{self} was asked for (--mlflow or ${URI_ENV}) but MLflow is not installed: "
                                "pip install 'flowprior[mlflow]', or unset it") from None
        return MlflowClient(self.uri)

    def experiment_id(self, client) -> str:
        """The experiment's id, creating it if it does not exist (a concurrent creator may win); looked up
        once per process."""
        from mlflow.exceptions import MlflowException

        if self in _EXPERIMENTS:
            return _EXPERIMENTS[self]
        for _ in range(2):
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                _EXPERIMENTS[self] = found.experiment_id
                return found.experiment_id
            try:
                _EXPERIMENTS[self] = client.create_experiment(self.experiment)
                return _EXPERIMENTS[self]
            except MlflowException:  # created meanwhile by another process: look again
                continue
        raise TrackingUnreachable(f"{self}: could not create the experiment")

    def connect(self):
        """``(client, experiment id)``; a ``TrackingUnreachable`` if the server does not answer."""
        client = self.client()
        try:
            return client, self.experiment_id(client)
        except Exception as error:  # noqa: BLE001 - MlflowException, a connection error: the same advice
            raise TrackingUnreachable(f"{self} did not answer ({type(error).__name__}: {str(error)[:300]}); check "
                                      f"the URI (--mlflow or ${URI_ENV}), or unset it to run without MLflow") from None

    @contextmanager
    def training_run(self, name: str, settings: dict, tags: dict[str, str]) -> Iterator["RunLog"]:
        """The run of the training run ``name``: the one a previous attempt started (a resumed fit), else a
        new one with ``settings`` as params; ended FINISHED, FAILED or KILLED (Ctrl+C) with the block."""
        client, experiment = self.connect()
        found = client.search_runs([experiment], filter_string=f"tags.`{TAG}run` = '{name}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment, run_name=name, tags={**tags, f"{TAG}run": name}).info.run_id
            _log(client, run_id, params(settings))
        run = RunLog(self, experiment, run_id)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                for key, value in run.end_tags.items():
                    client.set_tag(run_id, key, value)
                client.set_terminated(run_id, status)
            except Exception as error:  # noqa: BLE001 - the run's outcome matters more than its copy
                log.warning("%s: could not end %s as %s: %s", self, run, status, error)

    def tune_callback(self, tags: dict[str, str]):
        """Ray Tune's MLflow logger: one run per trial, in this experiment."""
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        self.connect()  # fail before the sweep runs, not in Tune's callback setup
        return MLflowLoggerCallback(self.uri, experiment_name=self.experiment, tags=tags)

    def mirror(self, records: Iterable[Record], artifact_uri: Callable[[Record], str]) -> None:
        """Each of ``records`` as one finished run (see the module docstring)."""
        client, experiment = self.connect()
        for record in records:
            tags = {**record.tags, f"{TAG}id": record.id, f"{TAG}kind": record.kind, f"{TAG}site": record.site,
                    f"{TAG}parents": ",".join(record.parents), f"{TAG}aligned_to": record.aligned_to,
                    f"{TAG}fingerprint": record.fingerprint, f"{TAG}name": record.name,
                    f"{TAG}artifact": artifact_uri(record) if record.artifact else None}  # ours win over a
            # record's tags (one registered before ``flowprior.*`` keys were refused)
            created = _unix_ms(record.created_at)
            run_id = client.create_run(experiment, start_time=created, run_name=record.id,
                                       tags={k: v for k, v in tags.items() if v}).info.run_id
            _log(client, run_id, params(record.config), scalars(record.metrics), step=0, at=created)
            client.set_terminated(run_id, "FINISHED", end_time=created)

    def mirrored(self) -> set[str]:
        """The ids of the records this experiment already has a run for."""
        (client, experiment), ids, token = self.connect(), set(), None
        while True:
            page = client.search_runs([experiment], filter_string=f"tags.`{TAG}id` LIKE '%'", max_results=1000,
                                      page_token=token)
            ids.update(run.data.tags[f"{TAG}id"] for run in page)
            token = page.token
            if not token:
                return ids


def mirror_record(record: Record, registry: Registry) -> None:
    """Copy a newly registered ``record`` to MLflow when tracking is on now; a failure only warns (the registry
    has the record; ``flowprior registry mirror`` copies it later)."""
    try:
        tracking = Tracking.from_env()
        if tracking is not None:
            tracking.mirror([record], registry.artifact_uri)
    except Exception as error:  # noqa: BLE001 - the registry has the record; MLflow gets only a copy
        log.warning("could not copy record %s to MLflow (%s: %s); `flowprior registry mirror` copies it later",
                    record.id, type(error).__name__, str(error)[:300])


def tracked_registry(store: Store) -> Registry:
    """The registry under ``store`` with :func:`mirror_record` as its hook: what every job that registers
    records opens."""
    return Registry(store, on_register=mirror_record)


def use(uri: str | None) -> Tracking | None:
    """The tracking a command asks for: ``uri`` (``--mlflow``), else ``$MLFLOW_TRACKING_URI``; checked (installed,
    answering) and put in this process's environment, which the Ray tasks it starts inherit."""
    if uri:
        os.environ[URI_ENV] = Tracking(uri.strip()).uri
    tracking = Tracking.from_env()
    if tracking is not None:
        tracking.connect()
    return tracking


@dataclass(frozen=True)
class RunLog:
    """A training run's metrics sink (picklable: it travels to the rank-0 worker)."""

    tracking: Tracking
    experiment_id: str
    run_id: str
    end_tags: dict[str, str] = field(default_factory=dict, compare=False)  # set when the run ends

    def __str__(self) -> str:
        if urlsplit(self.tracking.uri).scheme in ("http", "https"):  # the run's page in MLflow's UI
            base = redact(self.tracking.uri).rstrip("/")
            return f"MLflow run {base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"MLflow run {self.run_id}"

    def write(self, step: int, metrics: dict) -> None:
        _log(self.tracking.client(), self.run_id, metrics=scalars(metrics), step=step)


def _unix_ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _log(client, run_id: str, params: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
         step: int = 0, at: int | None = None) -> None:
    """``params`` and ``metrics`` (at ``step``, logged at unix ms ``at``, default now) in as few requests as
    MLflow's batch limit allows (100 params a batch)."""
    from mlflow.entities import Metric, Param

    at = at or int(time.time() * 1000)
    items = [Param(k, v) for k, v in (params or {}).items()]
    batches = [items[i:i + BATCH_PARAMS] for i in range(0, len(items), BATCH_PARAMS)] or [[]]
    client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v in (metrics or {}).items()], params=batches[0])
    for batch in batches[1:]:
        client.log_batch(run_id, params=batch)
