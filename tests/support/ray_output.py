"""Ray's own lines, which a flowprior command's output must not have (its workers' forwarded output, its
notices, warnings and colour codes)."""

RAY_NOISE = ("pid=", "\x1b[", "(raylet)", "RayDeprecationWarning", "core_worker.cc", "Token authentication",
             "tqdm", "repeated", "Ray deduplicates", "Execution plan", "progress UI", "Reporting training result",
             "PreemptionWatcher", "Started a local Ray instance", "WARNING", "INFO")


def ray_noise(output: str) -> list[str]:
    """The lines of ``output`` that are Ray's."""
    return [line for line in output.splitlines() if any(marker in line for marker in RAY_NOISE)]
