"""The errors a user can act on: one family, so callers (and the CLI) tell them from bugs.

    FlowpriorError                  the message says what is wrong and where; exit 2
    ├── SpecError                   a setting: the spec file and key, or the flag, and the value
    ├── DataError                   input data: the file, column, row and value
    ├── RegistryError               a record that is invalid, missing or refers to a missing record
    ├── CheckpointError             a checkpoint that is missing, malformed, of another kind or changed
    ├── TrackingError               MLflow asked for but not usable as given
    ├── UntrustedState              an unfinished sweep whose resume (unpickling) was not allowed
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


class Unreachable(FlowpriorError):
    """A service did not answer (or refused us); the command exits 1, as a retry may succeed."""

    exit_code = 1


class StoreError(Unreachable, OSError):
    """The store cannot be reached or used (server gone, no permission, bad URI).

    Messages name the store URI and the object key, never credentials.
    """


class RayUnreachable(Unreachable, ConnectionError):
    """Nothing answers at the Ray address (``ray.init`` itself would wait without a limit)."""


class TrackingUnreachable(Unreachable, RuntimeError):
    """The MLflow server asked for does not answer."""
