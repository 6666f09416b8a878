"""``flowprior demo``: the whole multi-site pipeline on the bundled wind-farm data, with a report."""

from pathlib import Path

SITES = Path(__file__).resolve().parents[2] / "sites"  # the repository's sites/ folder
