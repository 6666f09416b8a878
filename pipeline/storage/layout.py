"""Every top-level key of the store, named once: no other module writes one of these paths itself.

    artifacts/<sha256>.<ext>                 what records point at, named by content
    registry/records/<id>.json               one immutable record each
    registry/aliases/<name>/<version>.json   append-only alias logs
    registry/snapshots/<n>-<digest>.parquet  records gathered into one object
    registry/alias-snapshots/...parquet      the aliases' latest entries gathered into one object
    registry/gc/<expiry>-<random>.lease      present while a `registry gc` runs
    ray-runs/<run>/                          Ray Train and Tune runs (checkpoints, events, step logs)
    validated/<digest>.npz                   a feature file's statistics from a prior fit's validating pass
"""

ARTIFACTS = "artifacts"
RECORDS = "registry/records"
ALIASES = "registry/aliases"
SNAPSHOTS = "registry/snapshots"
ALIAS_SNAPSHOTS = "registry/alias-snapshots"
LEASES = "registry/gc"
RAY_RUNS = "ray-runs"
VALIDATED = "validated"
