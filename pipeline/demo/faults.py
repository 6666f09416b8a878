"""The demo's fault scores: every reading of a site's year scored by ``L_align`` of its latent (and by
reconstruction errors), and how well each score flags the rows with physically impossible readings (AUROC)."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import torch

from pipeline.data.scan import scan_features
from pipeline.demo.report import SCORE_DRAWS
from pipeline.method.encoder import Autoencoder
from pipeline.method.metrics import auroc
from pipeline.method.prior import FlowPrior
from pipeline.registry import Registry
from pipeline.sites import SiteSpec
from pipeline.sites.align import Alignment
from pipeline.sites.models import load_prior


def site_rows(spec: SiteSpec, year: int) -> tuple[np.ndarray, np.ndarray]:
    """The site's observations as its spec selects them, but of ``year`` (features, fault labels), in file order."""
    scan = scan_features(spec.observations.uri, columns=spec.observations.columns,
                         filters={**spec.observations.filters, "year": year})
    table = ds.dataset([f.path for f in scan.files], filesystem=scan.filesystem()).to_table(
        columns=[*scan.read_columns, "fault"], filter=scan.arrow_filter())
    x = np.stack([table[c].to_numpy(zero_copy_only=False) for c in scan.read_columns], axis=1)  # (n, d_obs)
    complete = np.isfinite(x).all(axis=1)
    return x[complete].astype(np.float32), table["fault"].to_numpy(zero_copy_only=False)[complete]


@torch.no_grad()
def fault_scores(encoder: Autoencoder, prior: FlowPrior, x: np.ndarray, seed: int = 0,
                 chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-row anomaly scores of readings ``x`` (n, d_obs): ``L_align`` of the encoder's latent under
    ``prior`` (``SCORE_DRAWS`` draws, fixed noise) and the reconstruction error, each (n,)."""
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {"l_align": [], "recon": []}
    for start in range(0, len(x), chunk):  # bounded memory: chunk x draws x width at a time
        o = torch.from_numpy(x[start:start + chunk])
        parts["l_align"].append(prior.alignment_loss(encoder.encode(o), draws=SCORE_DRAWS, generator=generator))
        parts["recon"].append(encoder.reconstruction_error(o))
    return {name: torch.cat(p).numpy() for name, p in parts.items()}


def auroc_table(per_site: dict[str, dict]) -> dict:
    """AUROC of each score per site and pooled (per year), where there are faults to find."""
    table = {}
    for year in (2015, 2014):
        pooled_scores: dict[str, list] = {}
        pooled_labels = []
        for site, data in per_site.items():
            labels, scores = data[year]["labels"], data[year]["scores"]
            pooled_labels.append(labels)
            for name, s in scores.items():
                pooled_scores.setdefault(name, []).append(s)
            if labels.any():
                table.setdefault(str(year), {})[site] = {
                    "faults": int(labels.sum()), "rows": len(labels),
                    **{n: auroc(torch.from_numpy(s), torch.from_numpy(labels)) for n, s in scores.items()}}
        labels = np.concatenate(pooled_labels)
        table.setdefault(str(year), {})["all"] = {
            "faults": int(labels.sum()), "rows": len(labels),
            **{n: auroc(torch.from_numpy(np.concatenate(s)), torch.from_numpy(labels))
               for n, s in pooled_scores.items()}}
    return table


def score_sites(registry: Registry, specs: list[SiteSpec], alignments: list[Alignment],
                 matched: list[Alignment | None]) -> tuple[dict, dict]:
    """``(per_site, priors)``: each site's rows of both years with their fault scores (L_align of the aligned
    encoder, its reconstruction and the lambda = 0 baseline's, and L_align of the ``match`` encoder if there is
    one), and the prior each site's encoder is aligned to."""
    per_site, priors = {}, {}
    for spec, alignment, match in zip(specs, alignments, matched, strict=True):
        prior = priors[spec.site] = load_prior(registry, alignment.record.aligned_to)
        per_site[spec.site] = {}
        for year in (2015, 2014):
            x, labels = site_rows(spec, year)
            aligned = fault_scores(alignment.aligned.model, prior, x, spec.seed)
            with torch.no_grad():
                recon_lambda0 = alignment.baseline.model.reconstruction_error(torch.from_numpy(x)).numpy()
            scores = {"l_align": aligned["l_align"], "recon_aligned": aligned["recon"], "recon_lambda0": recon_lambda0}
            if match is not None:
                matched_prior = load_prior(registry, match.record.aligned_to)
                scores["l_align_match"] = fault_scores(match.aligned.model, matched_prior, x, spec.seed)["l_align"]
            per_site[spec.site][year] = {"x": x, "labels": labels, "scores": scores}
    return per_site, priors
