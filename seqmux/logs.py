"""Running a stage from a Snakemake script or the CLI: logging, threads, one-line errors."""

import logging
import os
import signal
import socket
import sys
import time

from .errors import InputError


def configure_logging(log_path=None, level=logging.INFO):
    """Log to ``log_path`` (and stderr when no path is given), with timestamps."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_path:
        open(log_path, "w").close()  # truncate, then append: run_stage's progress bars write to the same file
        handler = logging.FileHandler(log_path, mode="a")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    root.setLevel(level)


def where():
    """Where this process runs: the host, and the SLURM job and GPUs it was given, if any."""
    parts = [f"host {socket.gethostname()}"]
    if os.environ.get("SLURM_JOB_ID"):
        parts.append(f"SLURM job {os.environ['SLURM_JOB_ID']}")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        parts.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
    return ", ".join(parts)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # a BaseException: every finally block and context manager runs


def _exit_on_sigterm():
    """Make SIGTERM raise SystemExit in this process; the previous handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread
        return None


def run_stage(log_path, fn, *args, threads=None, nice=0, **kwargs):
    """Call ``fn(*args, **kwargs)`` with logging (and progress bars) going to ``log_path``.

    ``threads``: torch's intra-op threads. ``nice``: added to the process's Unix nice value (a
    lower CPU priority; the tracks' jobs, so that on a machine shared with the Multiplexer's chain
    they take the idle cores rather than slowing it down).

    An ``InputError`` becomes one line on the real stderr (and in the log) and exit status 1;
    any other exception propagates with its traceback in the log. SIGTERM (Snakemake cancelling
    the other jobs after a failure, ``scancel``, a cluster's time limit) exits through the
    ``finally`` blocks, so temporary output files are removed (``seqmux.outputs.atomic_path``).
    """
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    configure_logging(log_path)
    console = sys.stderr
    log_file = open(log_path, "a", buffering=1) if log_path else None
    if log_file:
        sys.stderr = log_file  # tqdm and warnings follow into the log
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    if nice:
        os.nice(int(nice))
    log = logging.getLogger(fn.__module__)
    previous = _exit_on_sigterm()
    started = time.time()
    log.info("start %s (%s)", fn.__name__, where())
    try:
        result = fn(*args, **kwargs)
    except InputError as err:
        if log_path:  # without a log file the log is stderr, where the line below already goes
            log.error("%s", err)
        print(f"error: {err}", file=console, flush=True)
        sys.exit(1)
    except Exception:
        log.exception("failed")
        raise
    finally:
        sys.stderr = console
        if log_file:
            log_file.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("done %s in %.1f s", fn.__name__, time.time() - started)
    return result
