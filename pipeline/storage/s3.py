"""S3 access through s3fs: where endpoint and credentials come from, and failing fast.

Endpoint and credentials come the standard way (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles). ``S3Options``
overrides the endpoint or profile and sets tight timeouts: with botocore's defaults a hung
server stalls a client for minutes; here a dead server is an error within seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from datetime import datetime

from pipeline.errors import SpecError

ENV_PREFIX = "FLOWPRIOR_S3_"


@dataclass(frozen=True)
class S3Options:
    """Client settings; each field can also come from ``FLOWPRIOR_S3_<FIELD>`` (upper case)."""

    endpoint_url: str | None = None  # overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    profile: str | None = None  # an AWS profile name from ~/.aws/config
    connect_timeout: float = 2.0  # seconds
    read_timeout: float = 20.0  # seconds without a byte from the server
    retries: int = 2  # attempts per request in all (1 = no retry)

    def __post_init__(self) -> None:
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise SpecError(f"S3 timeouts must be > 0, got connect={self.connect_timeout} read={self.read_timeout}")
        if self.retries < 1:
            raise SpecError(f"S3 retries must be >= 1 (attempts per request), got {self.retries}")

    @classmethod
    def from_env(cls, **overrides: object) -> "S3Options":
        """Defaults, then ``FLOWPRIOR_S3_*`` variables, then ``overrides`` that are not None."""
        values: dict[str, object] = {}
        for f in fields(cls):
            text = os.environ.get(ENV_PREFIX + f.name.upper())
            if text:
                try:
                    values[f.name] = text if f.name in ("endpoint_url", "profile") else (
                        int(text) if f.name == "retries" else float(text))
                except ValueError:
                    raise SpecError(f"{ENV_PREFIX + f.name.upper()}={text!r} is not a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def filesystem(self):
        """A new ``s3fs.S3FileSystem`` with these settings and no listings cache (CAS needs fresh lists).

        Retries happen in one place only, botocore: ``total_max_attempts`` counts the first attempt
        (its ``max_attempts`` would count retries only), and s3fs's own retry loop is set to a single
        pass, since the two multiply. So a request to a hung server ends after at most
        ``retries x (connect_timeout + read_timeout)`` plus botocore's short backoff.
        """
        import s3fs
        from botocore.handlers import add_expect_header

        fs = s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url, profile=self.profile, use_listings_cache=False, skip_instance_cache=True,
            config_kwargs={"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                           "retries": {"total_max_attempts": self.retries, "mode": "standard"}})
        fs.retries = 1  # s3fs's own loop: one pass (an attribute: the constructor rejects it)
        fs.connect()  # the client now, so that its handlers can be changed
        # botocore asks for "100-continue" on uploads, and aiohttp waits for that interim answer with
        # no timeout: a hung server would stall every write forever. Send the body straight away.
        fs.s3.meta.events.unregister("before-call.s3", add_expect_header)
        # Listings: botocore parses every key's LastModified with dateutil, most of a 10,000-key listing's
        # time. Its parsers come from the session's factory, per response, so this applies from now on
        # (in this process: a pickled filesystem, e.g. Ray Train's storage, is rebuilt from its arguments).
        fs.session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=iso_timestamp)
        return fs


def iso_timestamp(value: str) -> datetime:
    """A timestamp of an S3 answer: ISO 8601 by the fast C parser, anything else by botocore's own."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

        return DEFAULT_TIMESTAMP_PARSER(value)


def is_precondition_failed(error: BaseException) -> bool:
    """True for a create-if-absent / if-match refusal in either shape s3fs surfaces.

    AWS and moto give ``FileExistsError``; servers whose 412 lacks a ``Condition`` field
    (SeaweedFS) give a plain ``OSError`` whose cause is a botocore ``ClientError``
    ``PreconditionFailed`` (or code ``412``).
    """
    if isinstance(error, FileExistsError):
        return True
    cause = error.__cause__ or error.__context__
    response = getattr(cause, "response", None) or getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412") or status == 412
