"""Writing result files whole or not at all: a temporary name, renamed when complete.

One way for every stage and track: a failed or killed job never leaves a half-written file under
the final name (Snakemake then sees the output as missing and reruns the job).
"""

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, unique=False):
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    remove it when the block raises (whatever the exception). Parent folders are created.

    ``unique``: a temporary name of this process alone (``NAME.<pid>.tmp``), for a file that
    several processes may write at once (a FASTA index built by the first jobs that read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed by default: a rerun after a kill overwrites a stale one
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if unique else f"{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj, path):
    """``obj`` as indented JSON at ``path`` (NaN and infinity are written as null)."""
    text = json.dumps(_finite(obj), indent=2)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")


def write_tsv(frame, path, index=False):
    """A pandas DataFrame as a tab-separated file with a header line."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index)


def _finite(obj):
    """``obj`` with float NaN / infinity replaced by None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
