"""Reruns that redo only what changed, and kills that lose nothing (the workflow level).

Each rerun test asks Snakemake what a dry run on the finished tiny run would do (``-n --quiet
rules``: the job count of every rule) and asserts the exact set of rules.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, deep_update, planned_jobs, run_workflow
from seqmux import checkpoint


def planned(workdir, config, *targets, extra=()):
    """``{rule: job count}`` a dry run would run (``all`` left out); ``{}`` when nothing is to be done."""
    return planned_jobs(workdir, config, *targets, extra=extra, leave_out=("all", "total"))


# compute_targets: 3 splits x 2 shards
DOWNSTREAM_OF_TARGETS = {"compute_targets": 6, "train_multiplexer": 1, "evaluate_multiplexer": 1}


def test_finished_run_has_nothing_to_do(tiny_run):
    assert planned(tiny_run, TINY) == {}


@pytest.mark.parametrize("setting", [
    {"targets": {"device": "cpu"}},
    {"targets": {"threads": 2}},
    {"targets": {"batch_size": 64}},
    {"multiplexer": {"train": {"device": "cpu", "threads": 2, "num_workers": 1,
                               "checkpoint_dir": "checkpoints/elsewhere"}}},
    {"multiplexer": {"evaluate": {"device": "cpu", "batch_size": 3, "threads": 2}}},
], ids=["targets.device", "targets.threads", "targets.batch_size", "multiplexer.train.execution",
        "multiplexer.evaluate.execution"])
def test_execution_settings_rerun_nothing(tiny_run, setting):
    assert planned(tiny_run, deep_update(TINY, setting)) == {}


def test_training_parameter_reruns_training_and_evaluation_only(tiny_run):
    config = deep_update(TINY, {"multiplexer": {"train": {"lr": 0.001}}})
    assert planned(tiny_run, config) == {"train_multiplexer": 1, "evaluate_multiplexer": 1}


def test_target_mode_reruns_targets_and_what_follows(tiny_run):
    config = deep_update(TINY, {"targets": {"mode": "diff"}})
    assert planned(tiny_run, config) == DOWNSTREAM_OF_TARGETS


def test_forcerun_one_stage_reruns_it_and_what_depends_on_it(tiny_run):
    assert planned(tiny_run, TINY, extra=("--forcerun", "compute_targets")) == DOWNSTREAM_OF_TARGETS
    until = planned(tiny_run, TINY, extra=("--forcerun", "compute_targets", "--until", "compute_targets"))
    assert until == {"compute_targets": 6}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_split_rebuilt_alone(tiny_run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(tiny_run, work, symlinks=True)  # copy2: modification times kept
    shards = sorted(work.glob("results/splits/*/*.feather"))
    before = {p: digest(p) for p in shards}
    test = sorted(work.glob("results/splits/test/*.feather"))
    for p in test:
        p.unlink()
    targets = [str(p.relative_to(work)) for p in test]
    assert planned(work, TINY, *targets) == {"compute_targets": len(test)}
    result = run_workflow(work, TINY, *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: digest(p) for p in shards} == before
    # the rebuilt file has the same bytes: Snakemake schedules nothing downstream of it again
    assert planned(work, TINY) == {}


# ---- kills ---------------------------------------------------------------------------------------

# slow enough to be killed inside a job: naive ISM in float64; 40 training steps, a checkpoint every 5
KILL = deep_update(TINY, {"targets": {"method": "naive", "precision": "float64"},
                          "multiplexer": {"train": {"steps": 40, "validate_every": 5, "patience": 0}}})
SPLIT_PRODUCTS = [f"results/splits/{s}/{shard}.feather" for s in ("train", "validation", "test")
                  for shard in ("0000", "0001")]
DATA_PRODUCTS = ["results/windows/windows.bed", "results/encoded/tokens.npy", *SPLIT_PRODUCTS]


def snakemake_command(workdir, *extra):
    """The command a user runs (no --nolock: a killed run leaves its lock, as for a user)."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", "--resources", "gpu=1", "--configfile", str(workdir / "test_config.yaml"), *extra]


def kill_when(workdir, ready, timeout=300):
    """Start the workflow in its own process group; SIGKILL the whole group once ``ready()`` holds.
    Returns True when the kill landed before the run ended."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(snakemake_command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rerun_after_kill(workdir):
    """What docs/reruns.md says to do after a killed run: unlock, then the same command again."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    locked = subprocess.run(snakemake_command(workdir), capture_output=True, text=True, env=env, timeout=600)
    assert locked.returncode != 0 and "cannot be locked" in locked.stderr + locked.stdout, locked.stderr[-2000:]
    unlock = subprocess.run(snakemake_command(workdir, "--unlock"), capture_output=True, text=True, env=env)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    again = subprocess.run(snakemake_command(workdir, "--rerun-incomplete"), capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    return again


def test_killed_runs_resume_and_end_as_an_uninterrupted_run(tmp_path):
    import yaml

    reference = tmp_path / "reference"
    result = run_workflow(reference, KILL)
    assert result.returncode == 0, result.stderr[-3000:]

    work = tmp_path / "killed"
    work.mkdir()
    (work / "test_config.yaml").write_text(yaml.safe_dump(KILL))
    # 1. killed inside the first target job (its log has started, its output is not there yet)
    started = []

    def a_target_job_started():
        started[:] = [p for p in work.glob("logs/compute_targets.*.log") if "start compute_targets" in p.read_text()]
        return bool(started)

    assert kill_when(work, a_target_job_started)
    split, shard = started[0].name.split(".")[1:3]
    assert not (work / f"results/splits/{split}/{shard}.feather").exists()
    rerun_after_kill(work)  # ... and once more, below, inside training
    for product in DATA_PRODUCTS:
        assert digest(work / product) == digest(reference / product), product

    # 2. killed inside training, after its first checkpoints and before the end
    for name in ("model.pt", "model_last.pt", "metrics.json"):
        (work / "results/multiplexer" / name).unlink()
    shutil.rmtree(work / "checkpoints")
    ck = work / "checkpoints/multiplexer/last.pt"

    def trained_a_while():
        if not ck.is_file():
            return False
        try:
            return checkpoint.load(ck, "multiplexer_resume")[1]["progress"]["step"] >= 10
        except Exception:  # being written
            return False

    assert kill_when(work, trained_a_while)
    assert not (work / "results/multiplexer/model.pt").exists()
    again = rerun_after_kill(work)
    assert "train_multiplexer" in again.stderr
    text = (work / "logs/train_multiplexer.log").read_text()
    assert "resum" in text.lower(), text[-2000:]
    # the same weights (best and last) as the uninterrupted run; model.pt also records the training
    # time and the step it resumed from, which differ by design
    for name in ("model.pt", "model_last.pt"):
        (sa, a), (sb, b) = (checkpoint.load(d / "results/multiplexer" / name, "multiplexer") for d in (work, reference))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert a["train"]["resumed_from_step"] >= 10 and b["train"]["resumed_from_step"] is None
    assert {k: a["train"][k] for k in ("best_step", "best_validation_loss", "steps_done")} == \
        {k: b["train"][k] for k in ("best_step", "best_validation_loss", "steps_done")}
    for product in DATA_PRODUCTS:
        assert digest(work / product) == digest(reference / product), product
    assert not list(work.glob("results/**/*.tmp")) and not list(work.glob("resources/**/*.tmp"))
