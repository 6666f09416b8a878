"""The method library stands alone: importing it (and the toy) must not import Ray."""

import subprocess
import sys


def test_method_library_does_not_import_ray():
    code = ("import sys, pipeline, pipeline.method.prior, pipeline.method.matching, pipeline.toy.experiment, "
            "pipeline.sites, pipeline.sites.site_prior, pipeline.sweeps, pipeline.sweeps.report, "
            "pipeline.method.encoder, pipeline.cli; bad = sorted(m for m in sys.modules if m == 'ray' or "
            "m.startswith('ray.')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_store_registry_data_and_tracking_need_neither_torch_nor_ray_nor_mlflow():
    code = ("import sys, pipeline.storage, pipeline.registry, pipeline.data, pipeline.tracking, pipeline.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'mlflow')); "
            "assert not bad, bad[:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_ingest_tasks_never_load_torch():
    """Ray's statistics and Ray Data's map tasks import pipeline.jobs.ingest; torch would add its import time
    and memory to every one of their worker processes."""
    code = ("import sys, pipeline.jobs.ingest, pipeline.method.prior_space; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')); assert not bad, bad[:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_specs_settings_and_the_cli_parser_load_neither_torch_nor_ray():
    """A spec, a fit's settings and the CLI's flags (defaults and choices taken from the dataclasses and
    constants the jobs use) load without torch or Ray: only running a job needs them."""
    code = ("import sys, pipeline.sites.spec, pipeline.sweeps.spec, pipeline.jobs.prior_fit_spec, "
            "pipeline.method.configs, pipeline.sites, pipeline.sweeps; from pipeline.cli import build_parser; "
            "build_parser(); bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')); "
            "assert not bad, bad[:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_federated_run_needs_neither_ray_nor_flower():
    """The federated run's maths and its in-process sites load no Flower (only its ServerApp, ClientApp and the
    commands that start Flower's processes do) and no Ray; the CLI's parser loads neither."""
    code = ("import sys, pipeline.federated.server, pipeline.federated.local, pipeline.federated.site, "
            "pipeline.federated.privacy; from pipeline.cli import build_parser; build_parser(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'flwr')); assert not bad, bad[:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
