"""What the site, sweep and demo job tests share: a small core prior on the wind-farm data, CI-sized site
specs, and the command line run in-process with Ray's forwarded worker lines filtered out."""

import re
from pathlib import Path

import yaml

from pipeline.cli import main
from pipeline.data import read_features
from pipeline.data.schema import FeatureSchema
from pipeline.data.split import split_indices
from pipeline.datasets import la_haute_borne as lhb
from pipeline.method.configs import FitConfig
from pipeline.method.prior import FlowPrior
from pipeline.registry import Registry
from pipeline.sites.decision import measure
from pipeline.sites.models import publish_prior
from pipeline.storage import Store

SITE = "R80736"  # a turbine whose shipped spec is its healthy 2015 operation (a reuse site in the demo)


def publish_core(store_uri: str, steps: int = 150, contract: bool = True):
    """A small core prior on the healthy 2014 rows, fitted in this process (the Ray Train fit has its own
    tests) and registered with the held-out numbers a site check compares with and (unless not
    ``contract``, as before contracts) its feature schema, as the Train job records them."""
    x = read_features(str(lhb.PARQUET), columns=lhb.FEATURES, filters={"year": 2014, "fault": False},
                      drop_nonfinite=True)
    train, heldout = split_indices(x.values, 0.1, seed=0)
    prior = FlowPrior.fit(x.values[train][:20000], latent_dim=4, projection="pca", normaliser="per-dim", width=32,
                          depth=2, fit=FitConfig(steps=steps, warmup=20, lr=2e-3), seed=0)
    if contract:
        prior.info["features"] = FeatureSchema.measure(x.columns, x.dtypes, x.values[train]).to_dict()
    own = measure(prior, prior.to_prior(x.values[heldout][:2000]), 1.0, 0.0, 1000)
    return publish_prior(
        Registry(Store.open(store_uri)), prior, fingerprint=x.fingerprint,
        metrics={"heldout_fm": own["fm_site"], "heldout_nll_proxy": own["nll_site"], "nll_samples": 1000})


def small_spec(tmp_path: Path, site: str = SITE, **overrides) -> Path:
    """The shipped spec of ``site`` with a few dozen steps everywhere (and any overrides)."""
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "sites" / f"{site}.yaml").read_text())
    for section in ("target", "observations"):
        data[section]["uri"] = str(lhb.PARQUET)
    data["finetune"] = {"steps": 60, "refit_steps": 60, "log_every": 30}
    data["alignment"] = {"lambda": 1.0, "steps": 60, "log_every": 30, "eval_points": 500}
    data.update(overrides)
    path = tmp_path / f"{site}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def flowprior(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; stdout without the lines Ray streams from its workers (which may
    arrive late, in the middle of a later command's output)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    ours = [line for line in out.out.splitlines(keepends=True) if not RAY_LOG.match(line)]
    return code, "".join(ours), out.err


RAY_LOG = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")
