"""``flowprior toy``: the paper's 2-D toy experiment, measured."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

from pipeline.cli.common import positive
from pipeline.toy.config import TARGET_NAMES, ToyConfig

LATENT_COLUMNS = (("nll_latents", "nll", "{:.2f}"), ("spread", "spread", "{:.2f}"), ("mmd", "mmd", "{:.4f}"),
                  ("mode_coverage", "cover", "{:.2f}"))


def _table(rows: list[dict]) -> str:
    """One line per target: the landscape's Spearman, the target's and the prior samples' NLL, then NLL,
    spread, MMD and mode coverage of plain alignment (``align:``) and distribution matching (``match:``)."""
    header = ["distribution", "spearman", "nll:target", "nll:prior", "spread:prior"]
    header += [f"{run}:{short}" for run in ("align", "match") for _, short, _ in LATENT_COLUMNS]
    lines = [header]
    for row in rows:
        line = [row["distribution"], f"{row['spearman_landscape']:.3f}", f"{row['nll_target']:.2f}",
                f"{row['prior_samples']['nll_latents']:.2f}", f"{row['prior_samples']['spread']:.2f}"]
        for run in (row, row["matching"]):
            line += ["-" if run.get(key) is None else fmt.format(run[key]) for key, _, fmt in LATENT_COLUMNS]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in lines)


def cmd_toy(args: argparse.Namespace) -> int:
    from pipeline.toy.experiment import run_toy
    from pipeline.toy.plots import write_plots

    names = list(TARGET_NAMES) if args.distribution == "all" else [args.distribution]
    overrides = {f.name: getattr(args, f.name) for f in fields(ToyConfig)
                 if getattr(args, f.name, None) is not None and f.name != "distribution"}
    rows = []
    for name in names:
        config = ToyConfig(distribution=name, seed=args.seed)
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
            "L_align (the paper) and with distribution matching (the latents follow the velocity difference "
            "between an online auxiliary flow and the prior), and "
            "write metrics.json plus latents.png, landscape.png and curves.png. Defaults take about "
            "10 minutes per target on 2 CPU cores; --quick about 1 minute. A local experiment: it writes to --out, "
            "not to a store."),
    )
    toy.add_argument("--distribution", required=True, choices=[*TARGET_NAMES, "all"],
                     help="target: mog (5 Gaussians on a circle), grid, moons, rings, spiral, swissroll, or all")
    toy.add_argument("--out", default="flowprior-toy", help="output folder (default: %(default)s; "
                     "with 'all', one subfolder per target)")
    toy.add_argument("--quick", action="store_true", help="CI-sized run: smaller network, fewer steps")
    toy.add_argument("--seed", type=int, default=ToyConfig.seed, help="random seed (default: %(default)s)")
    for name, help_text in (("width", "velocity MLP width"), ("depth", "number of AdaLN blocks"),
                            ("fit_steps", "prior training steps"), ("align_steps", "latent optimisation steps"),
                            ("latents", "number of free latents"), ("draws", "noise draws K per latent"),
                            ("aux_steps", "auxiliary-flow steps per matching update")):
        toy.add_argument(f"--{name.replace('_', '-')}", dest=name, type=positive, default=None,
                         help=f"{help_text} (overrides the default or --quick value)")
    toy.set_defaults(handler=cmd_toy)
