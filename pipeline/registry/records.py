"""Registry records: what one prior, site prior, site check, encoder or sweep is, and where it came from.

Typed links: ``parents`` (the prior a site prior was fine-tuned from, a refit's predecessor, ...),
``aligned_to`` (the prior an encoder's latents were aligned to) and ``fingerprint`` (the data it
was trained on, see ``pipeline.data.fingerprint``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone

import pyarrow as pa

from pipeline.errors import RegistryError
from pipeline.storage.names import NAME_PATTERN, validate_name

KINDS = ("prior", "site-prior", "site-check", "encoder", "sweep")
SECRET_KEY = re.compile(r"secret|password|passwd|token|access.?key|credential", re.IGNORECASE)
TAG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
TAG_VALUE_MAX = 256
RESERVED_TAG_PREFIX = "flowprior."  # the MLflow tags flowprior sets itself (``pipeline.tracking``)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN")


@dataclass(frozen=True)
class Record:
    id: str
    kind: str
    site: str | None
    parents: list[str]
    created_at: str  # ISO 8601, UTC
    config: dict
    metrics: dict
    artifact: str | None  # the artifact's key in the store (``artifacts/<hash>.<ext>``; older records: a URI)
    hash: str | None  # SHA-256 of the artifact's bytes
    fingerprint: str | None  # of the data it was trained on
    aligned_to: str | None = None  # encoders: the prior their latents were aligned to
    name: str | None = None  # optional human name (e.g. the Ray run name)
    tags: dict = field(default_factory=dict)  # {key: value} strings from the user (``--tag team=ops``), see TAG_KEY
    links: list[dict] = field(default_factory=list, compare=False)  # typed view of the links above

    def __post_init__(self) -> None:
        _check_types(self)
        if self.kind not in KINDS:
            raise RegistryError(f"unknown record kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        validate_name(self.id, "record id")
        if self.site is not None:
            validate_name(self.site, "site id")
        if self.name is not None:
            validate_name(self.name, "record name")
        for parent in self.parents:
            validate_name(parent, "parent id")
        if self.kind in ("site-prior", "site-check", "encoder") and self.site is None:
            raise RegistryError(f"a {self.kind} record needs a site")
        if self.kind == "encoder" and self.aligned_to is None:
            raise RegistryError("an encoder record needs aligned_to (the prior its latents are aligned to)")
        if self.kind in ("site-prior", "site-check") and not self.parents:
            raise RegistryError(f"a {self.kind} record needs a parent (the prior it was derived from or checked "
                                "against)")
        if (self.artifact is None) != (self.hash is None):
            raise RegistryError("artifact and hash go together")
        for key, value in self.tags.items():
            check_tag(key, value)
        links = [{"type": "parent", "id": p} for p in self.parents]
        links += [{"type": "aligned_to", "id": self.aligned_to}] if self.aligned_to else []
        links += [{"type": "trained_on", "fingerprint": self.fingerprint}] if self.fingerprint else []
        object.__setattr__(self, "links", links)

    @classmethod
    def new(cls, kind: str, **fields: object) -> "Record":
        """A record with a fresh id ``<kind>-<UTC time>-<random>`` and creation time: the one way records are
        written, so credentials are refused here (not on every read, where it would cost a third of ``ls``)."""
        now = datetime.now(timezone.utc)
        fields.setdefault("parents", [])
        fields.setdefault("config", {})
        fields["metrics"] = _finite(fields.get("metrics") or {})
        for name in ("site", "artifact", "hash", "fingerprint"):
            fields.setdefault(name, None)
        record = cls(id=f"{kind}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}", kind=kind,
                     created_at=now.isoformat(timespec="microseconds"), **fields)
        _refuse_secrets({"config": record.config, "metrics": record.metrics, "tags": record.tags})
        return record

    def to_json(self) -> bytes:
        """The record file's bytes. Without tags there is no ``tags`` key, so that readers from before tags
        existed (which refuse unknown fields) still read every untagged record."""
        data = asdict(self)
        if not data["tags"]:
            del data["tags"]
        return json.dumps(data, sort_keys=True, allow_nan=False, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "record", expected_id: str | None = None) -> "Record":
        """Parse a record file; ``where`` (its URI) names it in errors, and its ``id`` must be
        ``expected_id`` (the id its file name says) when given."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, an integer of over 4,300 digits
            raise RegistryError(f"{where}: not a valid record (not JSON: {error})") from None
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: not a valid record (a JSON {type(raw).__name__}, not an object)")
        raw.pop("links", None)
        known = {f.name for f in fields(cls) if f.init and f.name != "links"}
        unknown, missing = set(raw) - known, {f.name for f in fields(cls) if f.default is MISSING
                                              and f.default_factory is MISSING} - set(raw)
        if unknown or missing:
            raise RegistryError(f"{where}: not a valid record (unknown fields {sorted(unknown)}, missing "
                                f"{sorted(missing)})")
        try:
            record = cls(**raw)
        except ValueError as error:
            raise RegistryError(f"{where}: not a valid record ({error})") from None
        if expected_id is not None and record.id != expected_id:
            raise RegistryError(f"{where}: holds record id {record.id!r}, not the {expected_id!r} its name says; "
                                "refusing it (a record is served only under its own name)")
        return record


FIELD_TYPES = {"id": str, "kind": str, "site": (str, type(None)), "parents": list, "created_at": str, "config": dict,
               "metrics": dict, "artifact": (str, type(None)), "hash": (str, type(None)),
               "fingerprint": (str, type(None)), "aligned_to": (str, type(None)), "name": (str, type(None)),
               "tags": dict}
HASH = re.compile(r"[0-9a-f]{64}")
MAX_NESTING = 64  # config, metrics and tags nest at most this deep (views copy and print them recursively)


def _check_types(record: Record) -> None:
    """Every field has its JSON type (``parents: "abc"`` is not three parents), the time parses, the hash
    is a SHA-256 hex digest."""
    for name, kind in FIELD_TYPES.items():
        value = getattr(record, name)
        if not isinstance(value, kind):
            raise RegistryError(f"field {name} must be {_type_name(kind)}, got {value!r:.80}")
    for name in ("config", "metrics", "tags"):
        if deeper_than(getattr(record, name), MAX_NESTING):
            raise RegistryError(f"field {name} nests lists and objects deeper than {MAX_NESTING} levels")
    if not all(isinstance(p, str) for p in record.parents):
        raise RegistryError(f"field parents must be a list of record ids, got {record.parents!r:.80}")
    if record.aligned_to is not None:
        validate_name(record.aligned_to, "aligned_to id")
    if record.hash is not None and not HASH.fullmatch(record.hash):
        raise RegistryError(f"field hash must be a SHA-256 hex digest, got {record.hash!r:.80}")
    try:
        datetime.fromisoformat(record.created_at)
    except ValueError:
        raise RegistryError(f"field created_at must be an ISO 8601 time, got {record.created_at!r:.80}") from None


def deeper_than(value: object, limit: int) -> bool:
    """Whether lists and objects nest in ``value`` more than ``limit`` levels deep, level by level without
    recursion (0.14 ms for an encoder record's config with 300 history rows)."""
    level = [value]
    for _ in range(limit):
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
        if not level:
            return False
    return True


def check_tag(key: object, value: object) -> tuple[str, str]:
    """``(key, value)`` if they make a tag: a key of letters, digits, ``_ . -`` (64 at most, a letter first)
    and a printable string value of at most ``TAG_VALUE_MAX`` characters; else a ``RegistryError``."""
    if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
        raise RegistryError(f"tag key {key!r:.80}: expected a letter, then letters, digits, '_', '.' or '-' "
                            "(64 characters at most)")
    if SECRET_KEY.search(key):
        raise RegistryError(f"refusing tag {key}: credentials never go into the registry")
    if key.lower().startswith(RESERVED_TAG_PREFIX):
        raise RegistryError(f"refusing tag {key}: keys starting with {RESERVED_TAG_PREFIX!r} are flowprior's own "
                            "(they link MLflow runs to records and fits); choose another key")
    if not isinstance(value, str) or len(value) > TAG_VALUE_MAX or not value.isprintable():
        raise RegistryError(f"tag {key}: the value must be printable text of at most {TAG_VALUE_MAX} characters, "
                            f"got {value!r:.80}")
    return key, value


def parse_tag(text: str) -> tuple[str, str]:
    """``"key=value"`` (as ``--tag`` takes it) as a checked ``(key, value)``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise RegistryError(f"tag {text!r:.80}: expected key=value")
    return check_tag(key.strip(), value.strip())


def _type_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else {"str": "a string", "list": "a list", "dict": "an object"}[
        k.__name__] for k in kinds)


def _finite(value: object) -> object:
    """``value`` with NaN/inf floats replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _refuse_secrets(value: object, path: str = "") -> None:
    """Refuse credential-like keys and the current credential values anywhere in ``value``."""
    live = {os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 8}
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if SECRET_KEY.search(str(key)):
                    raise RegistryError(f"refusing to record {where}.{key}: credentials never go into the registry")
                stack.append((f"{where}.{key}", sub))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", sub) for i, sub in enumerate(item))
        elif isinstance(item, str) and any(secret in item for secret in live):
            raise RegistryError(f"refusing to record {where}: it contains a credential from the environment")


def record_id_of(name: str) -> str | None:
    """The record id a file name in ``registry/records/`` says (``<id>.json``), or None if no record's file can
    have that name (``prior-x (1).json``: a copy a person or a sync tool made)."""
    stem = name.removesuffix(".json")
    return stem if stem != name and NAME_PATTERN.fullmatch(stem) and ".." not in stem else None


def prior_method(record: Record) -> str | None:
    """How a site prior's artifact holds it: ``adapter`` (the adapter alone; its core is ``config["core"]``) or
    ``full`` (records from before adapters say nothing: full). None for other kinds."""
    if record.kind != "site-prior":
        return None
    return "adapter" if record.config.get("method") == "adapter" else "full"


def artifact_bytes(record: Record) -> int | None:
    """The size of ``record``'s artifact as registered (``config["artifact_bytes"]``); None where there is none
    or it is unknown (a record from before sizes were kept)."""
    value = record.config.get("artifact_bytes")
    return value if record.artifact and isinstance(value, int) and not isinstance(value, bool) else None


def records_table(records: list[Record]) -> pa.Table:
    """``records`` as one pyarrow table (config and metrics as JSON text), e.g. of ``Registry.records()``."""
    rows = [{**{k: getattr(r, k) for k in ("id", "kind", "site", "parents", "aligned_to", "artifact", "hash",
                                            "fingerprint", "name")},
             "created_at": r.created_at, "config": json.dumps(r.config, sort_keys=True, default=str),
             "metrics": json.dumps(r.metrics, sort_keys=True)} for r in records]
    schema = pa.schema([("id", pa.string()), ("kind", pa.string()), ("site", pa.string()),
                        ("parents", pa.list_(pa.string())), ("aligned_to", pa.string()),
                        ("artifact", pa.string()), ("hash", pa.string()), ("fingerprint", pa.string()),
                        ("name", pa.string()), ("created_at", pa.string()), ("config", pa.string()),
                        ("metrics", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.set_column(table.schema.get_field_index("created_at"), "created_at",
                            table["created_at"].cast(pa.timestamp("us", tz="UTC")))
