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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pipeline.storage.names import validate_name

KINDS = ("prior", "site-prior", "site-check", "encoder", "sweep")
SECRET_KEY = re.compile(r"secret|password|passwd|token|access.?key|credential", re.IGNORECASE)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN")


class RegistryError(ValueError):
    """A record that is invalid, missing or refers to a missing record."""


@dataclass(frozen=True)
class Record:
    id: str
    kind: str
    site: str | None
    parents: list[str]
    created_at: str  # ISO 8601, UTC
    config: dict
    metrics: dict
    artifact: str | None  # URI of the published artifact
    hash: str | None  # SHA-256 of the artifact's bytes
    fingerprint: str | None  # of the data it was trained on
    aligned_to: str | None = None  # encoders: the prior their latents were aligned to
    name: str | None = None  # optional human name (e.g. the Ray run name)
    links: list[dict] = field(default_factory=list, compare=False)  # typed view of the links above

    def __post_init__(self) -> None:
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
            raise RegistryError(f"a {self.kind} record needs a parent (the prior it was derived from or checked against)")
        if (self.artifact is None) != (self.hash is None):
            raise RegistryError("artifact and hash go together")
        _refuse_secrets({"config": self.config, "metrics": self.metrics})
        links = [{"type": "parent", "id": p} for p in self.parents]
        links += [{"type": "aligned_to", "id": self.aligned_to}] if self.aligned_to else []
        links += [{"type": "trained_on", "fingerprint": self.fingerprint}] if self.fingerprint else []
        object.__setattr__(self, "links", links)

    @classmethod
    def new(cls, kind: str, **fields: object) -> "Record":
        """A record with a fresh id ``<kind>-<UTC time>-<random>`` and creation time."""
        now = datetime.now(timezone.utc)
        fields.setdefault("parents", [])
        fields.setdefault("config", {})
        fields["metrics"] = _finite(fields.get("metrics") or {})
        for name in ("site", "artifact", "hash", "fingerprint"):
            fields.setdefault(name, None)
        return cls(id=f"{kind}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}", kind=kind,
                   created_at=now.isoformat(timespec="microseconds"), **fields)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "record") -> "Record":
        try:
            raw = json.loads(data)
            raw.pop("links", None)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as error:
            raise RegistryError(f"{where}: not a valid record ({error})") from None


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
