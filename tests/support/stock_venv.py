"""A "stock" Ray node's Python for the job-submission tests: a real virtual environment that holds
Ray (default, train, tune) and torch and nothing of flowprior's, and a wheelhouse of flowprior's other
requirements for its runtime_env's pip.

Both are built from this test environment's installed packages, with no index and no download:

* the virtual environment's site-packages links the installed files of exactly the dependency
  closure of ``ray[default,train,tune]`` and ``torch`` (installing them again would take minutes and
  1.6 GB per run); ``import pipeline``, ``s3fs``, ``safetensors`` ... fail there;
* each wheel of the wheelhouse re-packs one installed distribution (its files and dist-info, as listed
  in its RECORD, under the wheel tag it was installed from).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

STOCK = ["ray[default,train,tune]", "torch"]


def closure(roots: list[str]) -> dict[str, Distribution]:
    """Installed distributions that ``roots`` need, recursively (with their extras and markers)."""
    found: dict[str, Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        new = set(requirement.extras) - extras_seen.get(name, set())
        if name in found and not new:
            continue
        try:
            found[name] = distribution(requirement.name)
        except PackageNotFoundError:
            continue  # an optional dependency this environment does not have
        extras_seen.setdefault(name, set()).update(requirement.extras)
        for text in found[name].requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in {"", *extras_seen[name]}):
                todo.append(child)
    return found


def _top_level(dist: Distribution) -> set[str]:
    return {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}


def make_linked_venv(path: Path, roots: list[str]) -> Path:
    """A virtual environment at ``path`` whose site-packages links the installed files of exactly the
    dependency closure of ``roots``; returns its ``bin`` folder."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next((path / "lib").glob("python3*/site-packages"))
    for dist in closure(roots).values():
        for name in _top_level(dist):
            source, link = Path(dist.locate_file(name)), site / name
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return path / "bin"


def make_stock_venv(path: Path) -> Path:
    """The virtual environment at ``path`` (see the module docstring); returns its ``bin`` folder."""
    bin_dir = make_linked_venv(path, STOCK)
    (bin_dir / "ray").write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom ray.scripts.scripts import main\n"
                                 "sys.exit(main())\n")
    (bin_dir / "ray").chmod(0o755)
    return bin_dir


def make_wheelhouse(requirements: list[str], out: Path) -> list[str]:
    """Wheels in ``out`` of every installed distribution ``requirements`` need beyond the stock node's."""
    out.mkdir(parents=True, exist_ok=True)
    stock = closure(STOCK)
    names = []
    for name, dist in closure(requirements).items():
        if name in stock:
            continue
        wheel = dist.read_text("WHEEL") or ""
        tag = next(line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:"))
        filename = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
        with zipfile.ZipFile(out / filename, "w", zipfile.ZIP_STORED) as archive:
            for file in dist.files or []:
                source = Path(dist.locate_file(file))
                if file.parts[0] != ".." and "__pycache__" not in file.parts and source.is_file():
                    archive.write(source, file.as_posix())
        names.append(name)
    return sorted(names)
