"""URIs from users (store, features, observations): refused if they embed credentials, redacted in messages.

``s3://KEY:SECRET@bucket/...`` or ``file://user:pass@host/...`` would put a secret into logs,
error messages and registry records. Such a URI is refused with a message that shows it with the
credentials replaced by ``***``; credentials come from the environment or a profile instead.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from pipeline.errors import SpecError

SCHEMES = ("", "file", "s3")


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` part shown as ``***@`` (safe to print)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def split_uri(uri: str, what: str) -> SplitResult:
    """``urlsplit(uri)`` after refusing credentials, unsupported schemes and ``file://host/`` (no remote
    hosts for local paths); ``ValueError`` messages show ``uri`` redacted."""
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        raise SpecError(f"{what} {redact(uri)}: URIs must not embed credentials; use AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY or a profile (--s3-profile)")
    if parts.scheme not in SCHEMES:
        raise SpecError(f"{what} {redact(uri)}: unsupported URI scheme {parts.scheme!r}; use a local path, "
                         "file:///path or s3://bucket/prefix")
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise SpecError(f"{what} {uri}: file:// URIs name a local path (file:///path), not host {parts.netloc!r}")
    return parts
