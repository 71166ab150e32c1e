"""Shared fixtures: a small demo genome and demo model built with the package, and a runner for
the Snakemake workflow in a temporary directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# a workflow config small enough for a test: 10 windows of 400 bp on a 9 x 40 kb demo genome
TINY = {
    "seed": 3,
    "tracks": [],  # the spine alone; each track's tests run its own target rule
    "genome": {"demo": {"chromosomes": {f"chr{i}": 40000 for i in range(1, 10)}}},
    "windows": {"length": 400, "count": {"train": 6, "validation": 2, "test": 2}},
    "targets": {"shards": 2, "dtype": "float32"},
    "multiplexer": {"train": {"steps": 4, "validate_every": 2}, "evaluate": {"speed_windows": 1}},
}


def track_section(track):
    """The workflow's ``config[track]`` as the workflow sees it: config/config.yaml with the
    schema's defaults filled in (the schema is the only source of defaults)."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, schema=str(REPO / "schemas/config.schema.yaml"))
    return config[track]


def deep_update(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_workflow(workdir, config, *targets, extra_args=(), timeout=600, profile=None):
    """Run the workflow in ``workdir`` with ``config`` (a dict merged over config/config.yaml), on 2
    cores with one GPU token, or with ``profile`` (a folder under profiles/) instead."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "test_config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    how = ["--profile", str(REPO / "profiles" / profile)] if profile else ["--cores", "2", "--resources", "gpu=1"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           *how, "--configfile", str(cfg), "--nolock", *extra_args, *targets]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def planned_jobs(workdir, config, *targets, extra=(), leave_out=("total",)):
    """``{rule: job count}`` that a dry run of ``targets`` would run (``snakemake -n --quiet rules``),
    without the rules in ``leave_out``; ``{}`` when nothing is to be done."""
    result = run_workflow(workdir, config, *targets, extra_args=("--quiet", "rules", "-n", *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in leave_out:
            counts[parts[0]] = int(parts[1])
    return counts


def finished_run(workdir, config, *targets):
    """Run the workflow in ``workdir`` (as ``run_workflow``) and fail the test with Snakemake's last
    messages unless it succeeds. Returns ``workdir``."""
    result = run_workflow(workdir, config, *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(workdir)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One CPU thread for a module of small-model tests (``pytestmark = pytest.mark.usefixtures(...)``):
    thousands of tiny ops run as fast on one thread, and far faster on a machine whose cores are shared
    (an OpenMP team waits for its descheduled threads). The thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A demo genome (9 x 40 kb) with its motifs and a demo base model (L = 400)."""
    from seqmux.genome import build_demo_genome
    from seqmux.models import write_demo_model

    d = tmp_path_factory.mktemp("demo")
    build_demo_genome(d / "genome.fa", d / "sites.bed", d / "motifs.json",
                      {f"chr{i}": 40000 for i in range(1, 10)}, seed=5)
    write_demo_model(d / "genome.fa", d / "motifs.json", d / "model.pt", d / "names.txt", 400, 6, 5,
                     (24, 16, 16), 32, n_calibration=16)
    return d


@pytest.fixture(scope="session", autouse=True)
def slurm_background(request, tmp_path_factory):
    """When tests/test_slurm.py is among the selected tests and a SLURM controller answers, its run of
    the workflow starts here, with the session, and overlaps the other tests (it mostly waits on
    SLURM); ``(workdir, process, prefix, start)`` or None. The fixture ``slurm_run`` collects it.
    Not under pytest-xdist (every worker collects every test): there the worker that runs the SLURM
    tests starts the run itself and waits for it while the other workers run the rest."""
    selected = any(item.path.name == "test_slurm.py" for item in request.session.items)
    if not selected or os.environ.get("PYTEST_XDIST_WORKER"):
        yield None
        return
    import test_slurm

    if not test_slurm.controller_answers():
        yield None
        return
    workdir = tmp_path_factory.mktemp("slurm_run")
    proc, prefix, started = test_slurm.start_slurm_run(workdir)
    yield workdir, proc, prefix, started
    if proc.poll() is None:  # the session ended first (e.g. -x): nothing left running or queued
        os.killpg(proc.pid, 9)
        proc.wait()
        test_slurm.cancel_jobs(prefix)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One end-to-end run of the workflow on the tiny config (shared by several tests)."""
    return finished_run(tmp_path_factory.mktemp("tiny_run"), TINY)


# ---- float tolerances from the arithmetic ---------------------------------------------------------

# An ISM effect is the difference of two model outputs (logits for log-fold targets), each rounded by
# the float32 forward pass: 2x that rounding, and up to 4x more across the mutants of a window.
ROUNDING_FACTOR = 8


def float32_rounding(model, onehot, mode="logfold"):
    """How much float32 rounds ``model``'s outputs on ``onehot [B, 4, L]``, in the quantity whose
    differences are the effects: logits in ``logfold`` mode (logit of the outputs when the model has
    no final sigmoid), outputs in ``diff`` mode. The largest |float32 - float64| deviation, and at
    least one float32 ulp of the largest value. Measured on this CPU's kernels, so a tolerance of
    ``ROUNDING_FACTOR`` times it holds wherever the tests run."""
    import copy

    import numpy as np
    import torch

    from seqmux.ism import logit_model

    def values(m, x):
        with torch.no_grad():
            head = logit_model(m, x.shape[-1]) if mode == "logfold" else None
            if head is not None:
                return head(x).double()
            out = m(x).double()
            return torch.logit(out.clamp(1e-12, 1 - 1e-12)) if mode == "logfold" else out

    x32 = torch.as_tensor(onehot, dtype=torch.float32)
    v32 = values(model.eval(), x32)
    v64 = values(copy.deepcopy(model).double().eval(), x32.double())
    return max(float((v32 - v64).abs().max()), float(np.spacing(np.float32(v64.abs().max()))))


# base models whose outputs no log-fold target can use (tests of the workflow and of the CLI)
UNUSABLE_MODELS = '''
import torch
from torch import nn


class Softplus(nn.Module):
    length = 320  # the window length the command-line tool reads from a custom class

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(4, 3, 9)

    def forward(self, x):
        return nn.functional.softplus(self.conv(x).mean(-1)) + 1


class NaNNet(Softplus):
    def forward(self, x):
        return self.conv(x).mean(-1) * float("nan")


class Fails(Softplus):
    def forward(self, x):
        raise RuntimeError("boom")
'''
