"""``flowprior demo``: the whole multi-site pipeline on the bundled wind-farm data, with a report."""

from pathlib import Path

# the demo's site specs, shipped with the package (the repository's sites/ holds the same specs, a test
# keeps them equal): `pip install flowprior` then `flowprior demo` needs no checkout
SITES = Path(__file__).resolve().parent / "sites"
