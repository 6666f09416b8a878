"""``flowprior toy``: the paper's 2-D toy experiment, measured."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields, replace
from pathlib import Path

from pipeline.cli.common import positive

# The names of pipeline.toy.targets.TARGETS, kept here so that building the CLI needs no torch.
TARGET_NAMES = ("mog", "grid", "moons", "rings", "spiral", "swissroll")

TABLE_COLUMNS = (
    ("distribution", "{}"), ("spearman_landscape", "{:.3f}"), ("spearman_training", "{:.3f}"),
    ("nll_latents", "{:.3f}"), ("nll_target", "{:.3f}"), ("spread_ratio", "{:.2f}"),
    ("mode_coverage", "{:.2f}"), ("mmd", "{:.4f}"),
)


def _beta(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be 'auto' or a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"beta must be 'auto' or a number >= 0, got {text!r}")
    return value


def _table(rows: list[dict]) -> str:
    def cell(row: dict, key: str, fmt: str, match: bool = False) -> str:
        value = (row["matching"] if match else row).get(key)
        return "-" if value is None else fmt.format(value)

    header = [k for k, _ in TABLE_COLUMNS] + ["match:spread", "match:nll", "match:mmd"]
    lines = [header]
    for row in rows:
        lines.append([cell(row, k, f) for k, f in TABLE_COLUMNS] + [
            cell(row, "spread_ratio", "{:.2f}", True), cell(row, "nll_latents", "{:.3f}", True),
            cell(row, "mmd", "{:.4f}", True)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in lines)


def cmd_toy(args: argparse.Namespace) -> int:
    from pipeline.toy.experiment import ToyConfig, run_toy
    from pipeline.toy.plots import write_plots

    names = list(TARGET_NAMES) if args.distribution == "all" else [args.distribution]
    overrides = {f.name: getattr(args, f.name) for f in fields(ToyConfig)
                 if getattr(args, f.name, None) is not None and f.name != "distribution"}
    rows = []
    for name in names:
        config = ToyConfig(distribution=name, beta=args.beta, seed=args.seed)
        if args.quick:
            config = config.quick()
        config = replace(config, **overrides)
        out = Path(args.out) / name if args.distribution == "all" else Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary, arrays = run_toy(config, progress=lambda line: print(line, flush=True))
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        plots = write_plots(summary, arrays, out)
        print(f"[{name}] wrote {out / 'metrics.json'} and {', '.join(p.name for p in plots)} "
              f"({summary['seconds']:.0f} s)", flush=True)
        rows.append(summary)
    print()
    print(_table(rows))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    toy = commands.add_parser(
        "toy", help="reproduce the paper's 2-D toy experiment and measure it",
        description=(
            "Fit a flow prior on a 2-D target with a known density, optimise free latents with "
            "L_align (the paper) and with distribution matching (Gaussian latents + entropy), and "
            "write metrics.json plus latents.png, landscape.png and curves.png. Defaults take about "
            "2 minutes on 2 CPU cores; --quick about 30 s. A local experiment: it writes to --out, "
            "not to a store."),
    )
    toy.add_argument("--distribution", required=True, choices=[*TARGET_NAMES, "all"],
                     help="target: mog (5 Gaussians on a circle), grid, moons, rings, spiral, swissroll, or all")
    toy.add_argument("--out", default="flowprior-toy", help="output folder (default: %(default)s; "
                     "with 'all', one subfolder per target)")
    toy.add_argument("--quick", action="store_true", help="CI-sized run: smaller network, fewer steps")
    toy.add_argument("--beta", type=_beta, default=None, metavar="auto|B",
                     help="entropy weight of distribution matching (default: auto, calibrated from the prior)")
    toy.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    for name, help_text in (("width", "velocity MLP width"), ("depth", "number of AdaLN blocks"),
                            ("fit_steps", "prior training steps"), ("align_steps", "latent optimisation steps"),
                            ("latents", "number of free latents"), ("draws", "noise draws K per latent")):
        toy.add_argument(f"--{name.replace('_', '-')}", dest=name, type=positive, default=None,
                         help=f"{help_text} (overrides the default or --quick value)")
    toy.set_defaults(handler=cmd_toy)
