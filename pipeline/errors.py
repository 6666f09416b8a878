"""The errors a user can act on: one family, so callers (and the CLI) tell them from bugs.

    FlowpriorError                  the message says what is wrong and where; exit 2
    ├── SpecError                   a setting: the spec file and key, or the flag, and the value
    ├── DataError                   input data: the file, column, row and value
    ├── RegistryError               a record that is invalid, missing or refers to a missing record
    ├── CheckpointError             a checkpoint that is missing, malformed, of another kind or changed
    ├── TrackingError               MLflow asked for but not usable as given
    ├── UntrustedState              an unfinished sweep whose resume (unpickling) was not allowed
    ├── TrainingError               a training run that ended without its result (no checkpoint, failed trials)
    ├── SetupError                  the installation cannot run what was asked (flowprior not installed)
    ├── Contended                   a write that lost to other writers too often; exit 1 (retrying may help)
    └── Unreachable                 a service that did not answer; exit 1 (retrying may help)
        ├── StoreError              the store (server gone, no permission)
        ├── RayUnreachable          the Ray cluster
        └── TrackingUnreachable     the MLflow server

Each also derives from the built-in exception it used to be (``ValueError``, ``OSError``,
``ConnectionError``), so ``except ValueError`` written against earlier versions still works.
Anything else that escapes the ``flowprior`` command is a bug and shows its traceback. This module
imports nothing, so every layer (the method library included) can raise these.
"""

from __future__ import annotations


class FlowpriorError(Exception):
    """An error a user can fix from its message (no traceback needed)."""

    exit_code = 2


class SpecError(FlowpriorError, ValueError):
    """A setting that cannot be used; the message names the file and key (or flag) and the value."""


class DataError(FlowpriorError, ValueError):
    """Input data that cannot be used; the message names the file, column and value."""


class RegistryError(FlowpriorError, ValueError):
    """A record that is invalid, missing or refers to a missing record."""


class CheckpointError(FlowpriorError, ValueError):
    """A checkpoint is missing, malformed, of the wrong kind or has been changed."""


class TrackingError(FlowpriorError, ValueError):
    """MLflow asked for but not usable as given: not installed, or a URI with credentials."""


class UntrustedState(FlowpriorError, ValueError):
    """An unfinished Tune experiment exists under the store, and resuming it (unpickling) was not allowed."""


class TrainingError(FlowpriorError, RuntimeError):
    """A training run (a Ray Train fit, a sweep's trials) ended without the result it was run for; the message
    names the run and its first failure."""


class SetupError(FlowpriorError, RuntimeError):
    """The installation cannot run what was asked (e.g. flowprior itself is not installed as a package)."""


class Contended(FlowpriorError, RuntimeError):
    """A create-if-absent write lost to other writers every time it tried; a retry later may succeed."""

    exit_code = 1


class Unreachable(FlowpriorError):
    """A service did not answer (or refused us); the command exits 1, as a retry may succeed."""

    exit_code = 1


class StoreError(Unreachable, OSError):
    """The store cannot be reached or used (server gone, no permission, bad URI).

    Messages name the store URI and the object key, never credentials.
    """


class RayUnreachable(Unreachable, ConnectionError):
    """Nothing answers at the Ray address (``ray.init`` itself would wait without a limit)."""


class SuperLinkUnreachable(Unreachable, ConnectionError):
    """Flower's SuperLink does not answer at the address given (``flowprior federated fit``)."""


class TrackingUnreachable(Unreachable, RuntimeError):
    """The MLflow server asked for does not answer."""
