"""The Ray ``runtime_env`` that brings flowprior to a stock Ray cluster (imports neither Ray nor torch).

A cluster that has only Ray and torch installed -- a KubeRay image, Anyscale, a shared on-prem
cluster -- runs flowprior's jobs when they are submitted with

    py_modules: [<this installed pipeline package>]   # `ray job submit` uploads it to the cluster
    pip:
      packages: [<flowprior's other requirements>]     # installed per node into a virtualenv that
      pip_check: false                                 # sees the node's own Ray and torch

Ray and torch are never in ``packages``: the cluster's own builds (CUDA torch on GPU nodes, the
Ray that runs the cluster) are the ones a job must use. The requirement list comes from the
installed package's metadata (``pyproject.toml``), so it cannot drift from what ``pip install``
gets. Extra pip options (a private index, a wheelhouse) go in ``pip_install_options``.

Ray keeps a job's runtime_env in the job's metadata (the dashboard, ``ray job list`` and the GCS show it
to whoever can reach the head), so a pip option whose URL embeds credentials
(``--index-url=https://user:token@...``) is refused, never written: the nodes' pip reads them from its
own configuration (``pip.conf`` or ``PIP_INDEX_URL`` on the image, or a ``~/.netrc``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from urllib.parse import urlsplit

import pipeline
from pipeline.errors import SetupError, SpecError
from pipeline.storage.uris import redact

CLUSTER_PROVIDED = ("ray", "torch")  # the cluster's own: never installed by a job
DEFAULT_PIP_OPTIONS = ["--disable-pip-version-check", "--no-cache-dir"]  # Ray's own defaults
EXTRAS = ("mlflow",)  # the optional extras a job may need on the nodes (``test`` is for development)


def requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """flowprior's runtime requirements and those of ``extras`` (e.g. ``("mlflow",)``), without Ray and torch,
    e.g. ``["numpy>=1.24", ...]``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        declared = requires("flowprior") or []
    except PackageNotFoundError:
        raise SetupError("flowprior is not installed (pip install -e .); its requirements come from the "
                           "installed package's metadata") from None
    out = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and not any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue  # an optional extra not asked for (test, ...)
        requirement.marker = None  # pip on the node needs no "extra == ..." marker
        if canonicalize_name(requirement.name) not in CLUSTER_PROVIDED:
            out.append(str(requirement))
    return out


def check_pip_option(option: str) -> None:
    """Refuse a pip option such as ``--index-url=https://user:token@host/simple`` whose URL embeds credentials
    (``SpecError``, showing the URL redacted): the runtime_env is job metadata that Ray shows to anyone."""
    flag, _, value = option.partition("=")
    if "@" in urlsplit(value).netloc:
        raise SpecError(f"{flag} {redact(value)}: package index URLs must not embed credentials (Ray keeps the "
                        "runtime_env in the job's metadata, readable by whoever reaches the head); give the nodes' "
                        "pip its credentials in its own configuration instead: pip.conf or PIP_INDEX_URL on the "
                        "image, or a ~/.netrc entry for the index's host, and pass the URL without them")


def runtime_env(pip_options: list[str] | None = None, extras: tuple[str, ...] = ()) -> dict:
    """The runtime_env described in the module docstring, with the requirements of ``extras``; ``pip_options``
    are appended to Ray's defaults (``--index-url=URL``, ``--find-links=URL``; a URL with credentials is refused)."""
    for option in pip_options or []:
        check_pip_option(option)
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise SpecError(f"unknown extra {', '.join(unknown)}; expected one of {', '.join(EXTRAS)}")
    pip: dict = {"packages": requirements(extras), "pip_check": False}
    if pip_options:
        pip["pip_install_options"] = [*DEFAULT_PIP_OPTIONS, *pip_options]
    return {"py_modules": [str(Path(pipeline.__file__).resolve().parent)], "pip": pip,
            "excludes": ["__pycache__/", "*.pyc"]}
