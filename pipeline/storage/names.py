"""Validation of names that become parts of storage keys (site ids, aliases, run names)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from pipeline.errors import SpecError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a safe name, else raise ``ValueError`` naming it.

    Safe: 1-128 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, and no
    ``..`` anywhere, so a name can never escape its folder or address another object.
    """
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise SpecError(
            f"invalid {what} {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a "
            "letter or digit, with no '..', slashes or spaces")
    return value


def fresh_run_name(prefix: str) -> str:
    """A unique run name ``<prefix>-<UTC time>-<6 hex>``, for a run given none."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
