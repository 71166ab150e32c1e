"""How a job runs: the torch device it takes and the progress bar it shows.

Device choice, one rule for every stage, track and the command-line tool:

- ``cpu``, ``cuda``, ``cuda:N``: as asked (an error naming the setting when CUDA is absent or N is
  not a device).
- ``auto``: the CPU when there is no CUDA. With one visible GPU (a SLURM job gets its own through
  ``CUDA_VISIBLE_DEVICES``, and torch then numbers it 0), that GPU. With several visible GPUs (a
  workstation, where Snakemake counts ``gpu`` tokens but assigns no device), a GPU that no other
  seqmux job on this machine holds: each job takes an advisory lock file per GPU
  (``$SEQMUX_GPU_LOCK_DIR``, default ``/tmp/seqmux-gpu-locks-<uid>``), held until the process
  ends, even when it is killed. Among the free GPUs it takes the one with the most free memory;
  when all are held, the one with the most free memory.
"""

import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from .errors import InputError

log = logging.getLogger(__name__)

_HELD = {}  # GPU index -> open lock file of this process


def gpu_lock_dir():
    """Folder of the per-GPU lock files shared by the seqmux jobs of this machine."""
    default = Path(tempfile.gettempdir()) / f"seqmux-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("SEQMUX_GPU_LOCK_DIR", default))


def claim_gpu(free_memory, lock_dir=None):
    """Index of the GPU this process should use, among ``len(free_memory)`` visible GPUs with that
    many free bytes each (-1: unknown). A GPU whose lock file another live process holds is passed
    over; the one chosen stays locked by this process until it exits. Needs no GPU (tests call it
    with made-up memory)."""
    if _HELD:  # one GPU per process: the one it already holds
        return next(iter(_HELD))
    lock_dir = Path(lock_dir or gpu_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(free_memory)), key=lambda i: (-free_memory[i], i))
    for i in order:
        fh = open(lock_dir / f"gpu{i}.lock", "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another job
            fh.close()
            continue
        _HELD[i] = fh
        return i
    return order[0]  # every GPU is held: share the one with the most free memory


def release_gpus():
    """Give back every GPU lock this process holds (tests; a process exiting releases them anyway)."""
    for fh in _HELD.values():
        fh.close()
    _HELD.clear()


def choose_device(requested="auto", source="config", field="device"):
    """The ``torch.device`` for a user's setting (see the module docstring); InputError naming
    ``source`` and ``field`` when it cannot be had."""
    import torch

    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 1:
            return torch.device("cuda:0")
        free = []
        for i in range(count):
            try:
                free.append(torch.cuda.mem_get_info(i)[0])
            except Exception:  # a device we cannot query (busy, exclusive mode)
                free.append(-1)
        index = claim_gpu(free)
        log.info("device auto: cuda:%d of %d visible GPUs (lock files in %s)", index, count, gpu_lock_dir())
        return torch.device(f"cuda:{index}")
    try:
        dev = torch.device(requested)
    except RuntimeError as err:
        raise InputError(source, field, requested, str(err).splitlines()[0]) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(source, field, requested, "CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(source, field, requested,
                             f"this machine has {torch.cuda.device_count()} visible CUDA device(s)")
    return dev


def progress(iterable=None, total=None, desc="", initial=0):
    """A tqdm bar on stderr that stays readable in a log file (an update every 15 s when stderr is
    not a terminal, as in a job's log)."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, initial=initial, mininterval=0.5 if interactive else 15,
                dynamic_ncols=interactive, file=sys.stderr)
