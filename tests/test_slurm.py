"""The tiny workflow on a real SLURM cluster, submitted through ``profiles/slurm``.

Needs a SLURM controller that answers ``scontrol ping``, with accounting (``sacct``), a partition
and an account the current user may submit to, and a GPU on the node (a fake one will do):
``.ci/slurm.sh start`` (as root, Debian/Ubuntu) starts such a throwaway cluster on this machine.
Without one these tests are skipped, except when ``SEQMUX_REQUIRE_SLURM=1`` (CI): then they fail.
The partition and account are ``main`` and ``seqmux`` (the harness's), or ``SEQMUX_SLURM_PARTITION``
and ``SEQMUX_SLURM_ACCOUNT``.

The user profile is used unchanged; the test only adds, on the command line: the partition and
the account, memory requests capped to what the test node has, a 2 s first status check, no
retries, and a job-name prefix of its own (to find its jobs in ``sacct``, and cancel them when the
run overruns its time limit).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import torch
import yaml

from conftest import REPO, TINY
from seqmux import checkpoint

PROFILE = REPO / "profiles/slurm"
PARTITION = os.environ.get("SEQMUX_SLURM_PARTITION", "main")
ACCOUNT = os.environ.get("SEQMUX_SLURM_ACCOUNT", "seqmux")
# s for the whole SLURM run from its start (about 5 min on 2 cores busy with the other tests)
RUN_TIMEOUT = int(os.environ.get("SEQMUX_SLURM_TEST_TIMEOUT", 1200))
GPU_RULES = {"compute_targets", "train_multiplexer", "evaluate_multiplexer"}
SHARDS = [f"{i:04d}" for i in range(TINY["targets"]["shards"])]
# one SLURM job per Snakemake job of the tiny config (`all` runs on the submitting host)
EXPECTED_JOBS = Counter({"demo_genome": 1, "demo_base_model": 1, "sample_windows": 1, "encode_windows": 1,
                         "expand_mutations": len(SHARDS), "compute_targets": 3 * len(SHARDS),
                         "train_multiplexer": 1, "evaluate_multiplexer": 1})
SAME_BYTES = (["results/windows/windows.bed", "results/encoded/tokens.npy"]
              + [f"results/splits/{split}/{s}.feather" for split in ("train", "validation", "test") for s in SHARDS])
MULTIPLEXER_FILES = ["model.pt", "model_last.pt", "training_log.csv", "loss_curve.png", "metrics.json",
                     "metrics.tsv", "predicted_vs_exact.png", "profile_correlations.png", "example_heatmap.png"]


def controller_answers():
    if not shutil.which("scontrol"):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(scope="module")
def cluster():
    if not controller_answers():
        reason = ("no SLURM controller answers `scontrol ping`; start the throwaway test cluster with "
                  "`.ci/slurm.sh start` (root, Debian/Ubuntu) and stop it with `.ci/slurm.sh stop`")
        if os.environ.get("SEQMUX_REQUIRE_SLURM") == "1":
            pytest.fail(reason + " (SEQMUX_REQUIRE_SLURM=1: the SLURM tests must run)")
        pytest.skip(reason)
    assert shutil.which("sacct"), "sacct is missing: the SLURM executor needs job accounting"


def node_memory_mb():
    """The smallest RealMemory of the partition's nodes (MB)."""
    out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%m"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    sizes = [int(m) for m in re.findall(r"\d+", out)]
    assert sizes, f"partition {PARTITION!r} has no nodes: {out!r}"
    return min(sizes)


def capped(expression, cap):
    """A resource expression of the profile, limited to ``cap`` (memory of the test node)."""
    return f"min({expression}, {cap})"


def slurm_test_args(prefix):
    """The command-line additions to ``--profile profiles/slurm`` for the test cluster."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    cap = node_memory_mb() // 2  # two jobs side by side on the node
    defaults = dict(profile["default-resources"], slurm_partition=PARTITION, slurm_account=ACCOUNT)
    defaults["mem_mb"] = capped(defaults["mem_mb"], cap)
    per_rule = [f"{rule}:{key}={capped(value, cap) if key == 'mem_mb' else value}"
                for rule, resources in profile["set-resources"].items() for key, value in resources.items()]
    return ["--default-resources", *(f"{k}={v}" for k, v in defaults.items()),
            "--set-resources", *per_rule,
            "--slurm-init-seconds-before-status-checks", "2",
            "--retries", "0",
            "--slurm-jobname-prefix", prefix]


def cancel_jobs(prefix):
    """Cancel this run's jobs still in the queue (after a timeout)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
    ids = [line.split()[0] for line in out.splitlines() if line.split()[1:2] and line.split()[1].startswith(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], timeout=30)
    return ids


def sacct_jobs(prefix):
    """This run's SLURM jobs (allocations only), as dicts of sacct fields."""
    fields = ["JobID", "JobName", "State", "ExitCode", "AllocTRES", "Comment", "Partition", "Account"]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-S", "now-1days", "-o", ",".join(fields)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    return [r for r in rows if r["JobName"].startswith(prefix + "_")]


def start_slurm_run(workdir):
    """Start the tiny workflow through profiles/slurm in ``workdir`` (its own process group, output to
    ``workdir/snakemake.out``); returns ``(process, job-name prefix, start time)``. Called at the start
    of the test session (conftest.py) when these tests are selected: the run is mostly waiting for
    SLURM's queue and status checks, which then overlaps the other tests."""
    (workdir / "test_config.yaml").write_text(yaml.safe_dump(TINY))
    prefix = f"seqmuxtest{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "test_config.yaml"), "--profile", str(PROFILE), "--nolock",
           *slurm_test_args(prefix)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(workdir / "snakemake.out", "w") as out:  # a file, not a pipe nobody reads meanwhile
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return proc, prefix, time.time()


def finish_slurm_run(proc, prefix, started, workdir):
    """Wait for a run of ``start_slurm_run`` (at most ``RUN_TIMEOUT`` s from its start; then kill it and
    cancel its jobs); returns its output."""
    try:
        proc.wait(timeout=max(1.0, RUN_TIMEOUT - (time.time() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        cancelled = cancel_jobs(prefix)
        output = (workdir / "snakemake.out").read_text()
        pytest.fail(f"the SLURM run took more than {RUN_TIMEOUT} s (cancelled jobs: {cancelled}); "
                    f"squeue/sacct and {workdir}/.snakemake/slurm_logs tell why. Output:\n{output[-4000:]}")
    print(f"SLURM run: {time.time() - started:.0f} s from its start", file=sys.stderr)
    return (workdir / "snakemake.out").read_text()


@pytest.fixture(scope="module")
def slurm_run(cluster, slurm_background, tmp_path_factory):
    """One run of the tiny workflow through profiles/slurm (started with the session when possible);
    its workdir, output and job prefix."""
    if slurm_background is None:  # not started with the session (a pytest-xdist worker)
        workdir = tmp_path_factory.mktemp("slurm_run")
        slurm_background = (workdir, *start_slurm_run(workdir))
    workdir, proc, prefix, started = slurm_background
    output = finish_slurm_run(proc, prefix, started, workdir)
    assert proc.returncode == 0, output[-4000:]
    return workdir, output, prefix


def rule_of(comment):
    """The rule and wildcards the SLURM executor wrote into the job comment."""
    match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", comment)
    assert match, f"unexpected job comment {comment!r}"
    return match.group(1), match.group(2) or ""


def stage_log(workdir, rule, wildcards):
    """The stage's own log, ``logs/<rule>[.<wildcard>...].log`` (the comment joins wildcards by _)."""
    return (workdir / f"logs/{rule}{'.' + wildcards.replace('_', '.') if wildcards else ''}.log").read_text()


def test_every_job_was_a_completed_slurm_job(slurm_run):
    workdir, output, prefix = slurm_run
    jobs = sacct_jobs(prefix)
    assert Counter(rule_of(j["Comment"])[0] for j in jobs) == EXPECTED_JOBS, jobs
    for job in jobs:
        assert (job["State"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        assert (job["Partition"], job["Account"]) == (PARTITION, ACCOUNT), job
    # Snakemake reported each of them as submitted to SLURM
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", output))
    assert submitted == {j["JobID"] for j in jobs}
    # and each stage's own log was written inside its SLURM job
    for job in jobs:
        rule, shard = rule_of(job["Comment"])
        log = stage_log(workdir, rule, shard)
        assert f"SLURM job {job['JobID']}" in log.splitlines()[0], (rule, log[:300])


def test_gpu_rules_got_a_gpu(slurm_run):
    workdir, _, prefix = slurm_run
    for job in sacct_jobs(prefix):
        rule, shard = rule_of(job["Comment"])
        has_gpu = "gres/gpu=1" in job["AllocTRES"].split(",")
        assert has_gpu == (rule in GPU_RULES), (rule, job["AllocTRES"])
        first_line = stage_log(workdir, rule, shard).splitlines()[0]
        # SLURM hands the job its GPU; CUDA would see it as device 0
        assert ("CUDA_VISIBLE_DEVICES=0" in first_line) == (rule in GPU_RULES), (rule, first_line)


def test_same_products_as_a_local_run(slurm_run, request):
    """Byte-identical windows, tokens, targets and splits; the same Multiplexer (weights, training
    curve, metrics), timings aside."""
    workdir = slurm_run[0]
    tiny_run = request.getfixturevalue("tiny_run")  # the local run, only once the SLURM run is there
    for product in SAME_BYTES:
        assert (workdir / product).read_bytes() == (tiny_run / product).read_bytes(), product
    mux, local = workdir / "results/multiplexer", tiny_run / "results/multiplexer"
    for name in MULTIPLEXER_FILES:
        assert (mux / name).stat().st_size > 0, name
    for name in ("model.pt", "model_last.pt"):
        a, b = (checkpoint.load(d / name, "multiplexer")[0] for d in (mux, local))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def without_timings(value):
        if isinstance(value, dict):
            return {k: without_timings(v) for k, v in value.items()
                    if not re.search(r"seconds|ms_per_window|speedup", k)}
        return value

    metrics = [without_timings(json.loads((d / "metrics.json").read_text())) for d in (mux, local)]
    assert metrics[0] == metrics[1]
    curves = [[row.split(",")[:-1] for row in (d / "training_log.csv").read_text().splitlines()] for d in (mux, local)]
    assert curves[0] == curves[1]
