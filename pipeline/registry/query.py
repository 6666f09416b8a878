"""Which records a ``--where key=value`` filter keeps (``flowprior registry ls --where ...``).

Keys name a record field, a time bound or a tag:

    id=ID  kind=encoder  site=R80711  name=...  aligned_to=ID  parent=ID           a field equals the value
    fingerprint=...  hash=SHA-256  artifact=artifacts/...
    created_after=2026-11-01  created_before=2026-11-30T12:00                       ISO 8601, UTC unless zoned
    team=ops  tag.kind=nightly                                                     a tag (``tag.`` for a tag
                                                                                   named like a field)

Filters on different keys must all hold; several on one key keep a record that meets any of them
(``--where site=A --where site=B`` is both sites).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import RegistryError
from pipeline.registry.aliases import utc
from pipeline.registry.records import TAG_KEY, Record

FIELDS = ("id", "kind", "site", "name", "aligned_to", "parent", "fingerprint", "hash", "artifact")
TIMES = ("created_after", "created_before")
# record fields --where does not compare, and what to use instead
NOT_FILTERS = {"parents": "parent=ID", "created_at": "created_after=TIME or created_before=TIME",
               "config": "`registry show ID --json`", "metrics": "`registry show ID --json`",
               "tags": "KEY=VALUE for a tag", "links": "parent=ID or aligned_to=ID"}
TAG_PREFIX = "tag."


@dataclass(frozen=True)
class Where:
    key: str  # a field of FIELDS, a time bound of TIMES, or "tag.<key>"
    value: str

    @classmethod
    def parse(cls, text: str) -> "Where":
        """``key=value`` checked once, here: a known field, a time that parses, or a valid tag key."""
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise RegistryError(f"--where {text!r:.80}: expected key=value (e.g. kind=encoder, team=ops)")
        if key in TIMES:
            try:
                utc(value)
            except ValueError:
                raise RegistryError(f"--where {key}={value!r:.40}: not an ISO 8601 time (e.g. 2026-11-30 or "
                                    "2026-11-30T12:00)") from None
            return cls(key, value)
        if key in FIELDS:
            return cls(key, value)
        if key in NOT_FILTERS:
            raise RegistryError(f"--where {key}=...: {key} is a record field that --where does not compare; use "
                                f"{NOT_FILTERS[key]} (a tag named {key} is tag.{key}=VALUE)")
        tag = key.removeprefix(TAG_PREFIX)
        if not TAG_KEY.fullmatch(tag):
            raise RegistryError(f"--where {key!r:.80}: not a field ({', '.join(FIELDS + TIMES)}) nor a tag key")
        return cls(TAG_PREFIX + tag, value)

    def holds(self, record: Record) -> bool:
        if self.key == "parent":
            return self.value in record.parents
        if self.key in FIELDS:
            return getattr(record, self.key) == self.value
        if self.key in TIMES:
            created, bound = utc(record.created_at), utc(self.value)
            return created > bound if self.key == "created_after" else created < bound
        return record.tags.get(self.key[len(TAG_PREFIX):]) == self.value


def select(records: list[Record], where: list[Where]) -> list[Record]:
    """The records that meet every key's filters (any one of a key's, when it has several)."""
    by_key: dict[str, list[Where]] = {}
    for w in where:
        by_key.setdefault(w.key, []).append(w)
    return [r for r in records if all(any(w.holds(r) for w in ws) for ws in by_key.values())]

