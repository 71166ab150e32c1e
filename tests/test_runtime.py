"""Device choice (the one helper every stage, track and the CLI use) and GPU sharing between jobs."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import REPO
from seqmux.errors import InputError
from seqmux.runtime import choose_device, claim_gpu, release_gpus


def test_explicit_devices_and_errors_name_the_setting():
    assert choose_device("cpu", "config", "sgrna.device") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert choose_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match=r"^config: targets.device='cuda:1': CUDA is not available"):
            choose_device("cuda:1", "config", "targets.device")
    with pytest.raises(InputError, match=r"^command line: --device='gpu0': "):
        choose_device("gpu0", "command line", "--device")


CLAIM = textwrap.dedent("""
    import sys, time
    from seqmux.runtime import claim_gpu
    print(claim_gpu([int(m) for m in sys.argv[2].split(",")], sys.argv[1]), flush=True)
    time.sleep(float(sys.argv[3]))
""")


def claim_in_process(lock_dir, free, hold):
    """A separate process that claims a GPU, prints its index and holds the lock ``hold`` seconds."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIM, str(lock_dir), ",".join(map(str, free)), str(hold)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    return proc, int(proc.stdout.readline())


def test_concurrent_jobs_take_different_gpus(tmp_path):
    free = [10, 30, 20]  # bytes free per GPU: the most free first
    first, a = claim_in_process(tmp_path, free, 30)
    second, b = claim_in_process(tmp_path, free, 30)
    third, c = claim_in_process(tmp_path, free, 30)
    assert (a, b, c) == (1, 2, 0)
    # all held: a fourth job shares the GPU with the most free memory
    fourth, d = claim_in_process(tmp_path, free, 0)
    assert d == 1
    # a job that ends (even killed) gives its GPU back
    first.kill()
    first.wait()
    fifth, e = claim_in_process(tmp_path, free, 0)
    assert e == 1
    for proc in (second, third, fourth, fifth):
        proc.kill()
        proc.wait()


def test_a_process_keeps_its_gpu(tmp_path):
    try:
        assert claim_gpu([5, 5], tmp_path) == 0
        assert claim_gpu([1, 9], tmp_path) == 0  # the same process asks again: the GPU it holds
    finally:
        release_gpus()
    assert claim_gpu([1, 9], tmp_path) == 1
    release_gpus()


KILLED_STAGE = '''
import sys
import time

from seqmux.logs import run_stage
from seqmux.outputs import atomic_path


def stage(out):
    with atomic_path(out) as tmp:
        tmp.write_text("half")
        while True:
            time.sleep(0.05)


run_stage(sys.argv[2], stage, sys.argv[1])
'''


def test_terminated_stage_leaves_no_temporary_file(tmp_path):
    """SIGTERM (Snakemake cancelling the other jobs of a failed run, scancel) goes through the
    finally blocks: the half-written temporary file is removed, nothing is left under the final name."""
    import signal

    script = tmp_path / "stage.py"
    script.write_text(KILLED_STAGE)
    out = tmp_path / "results" / "out.txt"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / "stage.log")],
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    tmp = out.with_name("out.txt.tmp")
    for _ in range(1200):  # wait (up to 60 s) until the stage is writing
        if tmp.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert tmp.exists(), "the stage never started writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not tmp.exists() and not out.exists()


NICE_STAGE = '''
import os
import sys

from seqmux.logs import run_stage

run_stage(sys.argv[1], lambda: print("NICE", os.nice(0)), nice=int(sys.argv[2]))
'''


def test_stage_runs_at_the_lower_priority_it_is_given(tmp_path):
    """``nice`` (the tracks' ``tracks_nice``) adds to the process's nice value; 0 leaves it."""
    script = tmp_path / "stage.py"
    script.write_text(NICE_STAGE)
    seen = {}
    for nice in (0, 7):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"stage{nice}.log"), str(nice)],
                              env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen[nice] = int(proc.stdout.split("NICE")[1])
    assert seen[7] == min(seen[0] + 7, 19)
