"""Device choice (the one helper every stage, track and the CLI use) and GPU sharing between jobs."""

import subprocess
import sys
import textwrap

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
