"""Can the tests fail? Break the code each guards, one change at a time, and run the tests that guard it.

    python benchmarks/mutation_check.py            # ~3 min on 2 cores; restores every file it changes

Each mutation replaces one exact piece of source with a plausible bug (an off-by-one, a dropped term,
a flipped comparison, a check removed). It is *caught* when the named fast tests then fail. A
mutation that survives names a test gap. Prints one line per mutation and the caught share; exit
status 1 if any survived. Run it on a clean checkout (it rewrites files in place and restores them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file, exact source, its bug, the tests that should catch it)
MUTATIONS = [
    ("pipeline/method/paths.py", "return (1.0 - t) * x_0 + t * x_1", "return (1.0 - t) * x_0 + t * x_0",
     "tests/method/test_losses.py"),
    ("pipeline/method/losses.py", "return residual.pow(2).sum(-1).reshape(n, draws).mean(-1)",
     "return residual.pow(2).mean(-1).reshape(n, draws).mean(-1)", "tests/method/test_losses.py"),
    ("pipeline/method/prior_space.py", "return (x @ p.T - mean) / scale  # (n, d1)",
     "return (x @ p.T - mean) * scale  # (n, d1)", "tests/method/test_prior_space.py tests/method/test_prior.py"),
    ("pipeline/method/moments.py", "np.outer(delta, delta) * self.n * other.n / n",
     "np.outer(delta, delta) * self.n / n", "tests/method/test_moments.py"),
    ("pipeline/method/transforms.py", "vectors[:, ::-1][:, :latent_dim]", "vectors[:, :latent_dim]",
     "tests/method/test_transforms.py tests/method/test_prior_space.py"),
    ("pipeline/method/checkpoint.py", "if content_digest(kind, config, tensors) != metadata.get(\"digest\"):",
     "if False:", "tests/method/test_prior.py tests/method/test_encoder.py"),
    ("pipeline/data/split.py", "* 2.0**-53 < fraction", "* 2.0**-53 <= fraction / 2", "tests/data/test_split.py"),
    ("pipeline/data/split.py", "if min(len(train), len(held)) < MIN_ROWS:", "if False:", "tests/data/test_split.py"),
    ("pipeline/sites/decision.py", "if metrics[\"fm_ratio\"] > thresholds.refit_fm:",
     "if metrics[\"fm_ratio\"] < thresholds.refit_fm:", "tests/sites/test_decision.py"),
    ("pipeline/sweeps/objective.py", "key=lambda t: (t[\"final\"][\"objective\"], t[\"config\"][\"lam\"])",
     "key=lambda t: (-t[\"final\"][\"objective\"], t[\"config\"][\"lam\"])", "tests/sweeps"),
    ("pipeline/registry/aliases.py", "if expect is not None and (current.target if current else None) != expect:",
     "if False:", "tests/registry"),
    ("pipeline/registry/records.py", "SECRET_KEY = re.compile(r\"secret|password|passwd|token|access.?key|credential\"",
     "SECRET_KEY = re.compile(r\"secret|password|passwd|token|credential\"", "tests/registry"),
    ("pipeline/storage/uris.py", "return parts._replace(netloc=\"***@\" + parts.netloc.rsplit(\"@\", 1)[1]).geturl()",
     "return uri", "tests/storage tests/test_tracking.py"),
    ("pipeline/cli/__init__.py", "except FlowpriorError as error:", "except Exception as error:",
     "tests/test_cli.py"),
    ("pipeline/storage/store.py", "os.link(tmp, final)  # atomic", "os.replace(tmp, final)  # atomic",
     "tests/storage tests/registry"),
    ("pipeline/data/split.py", "+ np.float32(0.0)  # -0.0 -> 0.0", "# -0.0 -> 0.0", "tests/data/test_split.py"),
    ("pipeline/method/metrics.py", "losses = [flow_matching_loss(velocity, z, generator=generator).mean()",
     "losses = [flow_matching_loss(velocity, z).mean()", "tests/method/test_metrics.py tests/sites"),
    ("pipeline/jobs/sweep/scheduling.py", "for combo in combos for site in sites]",
     "for site in sites for combo in combos]", "tests/jobs/test_sweep.py"),
]


def main() -> int:
    caught = 0
    for path, old, new, tests in MUTATIONS:
        file = ROOT / path
        original = file.read_text()
        if original.count(old) != 1:
            print(f"STALE     {path}: the source to mutate is not there once; update this script")
            return 2
        file.write_text(original.replace(old, new))
        try:
            started = time.perf_counter()
            command = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider"]
            run = subprocess.run([*command, *tests.split()], cwd=ROOT, capture_output=True, text=True)
        finally:
            file.write_text(original)
        killed = run.returncode != 0
        caught += killed
        print(f"{'caught  ' if killed else 'SURVIVED'}  {time.perf_counter() - started:5.1f} s  {path}: "
              f"{old[:60]!r} -> {new[:40]!r}  ({tests})", flush=True)
    print(f"{caught} of {len(MUTATIONS)} mutations caught by the fast tier")
    return 0 if caught == len(MUTATIONS) else 1


if __name__ == "__main__":
    sys.exit(main())
