"""The registry: immutable records of priors, site priors, encoders and sweeps, with lineage.

No server: records are JSON files under the store (``registry/records/<id>.json``), written
create-if-absent, and aliases are append-only logs of moves (``registry/aliases/<name>/``).
"""

from pipeline.registry.aliases import AliasMove
from pipeline.registry.artifacts import IntegrityError
from pipeline.registry.records import KINDS, Record
from pipeline.registry.registry import CORE_ALIAS, MissingRecord, Registry, current_alias

__all__ = ["AliasMove", "CORE_ALIAS", "IntegrityError", "KINDS", "MissingRecord", "Record", "Registry",
           "current_alias"]
