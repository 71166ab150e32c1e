"""In-silico mutagenesis (ISM) targets of a base model.

For a window with one-hot ``x [4, L]`` and sigmoid outputs ``ref = model(x) [F]``, the target of
putting base ``b`` at position ``p`` is ``[f, b, p]``: the log-fold change (default) or the
difference ``alt - ref`` of the model's outputs, exactly 0 for the identity substitution.
``predict_substitutions`` is the one entry point for computing substitution predictions.
"""

import logging
import sys

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from .encoding import one_hot

log = logging.getLogger(__name__)

EPS = 1e-6


def logfold(alt, ref, eps=EPS):
    """Log-fold change of sigmoid outputs: ``log((alt+e)(1-ref+e) / ((1-alt+e)(ref+e)))``."""
    return torch.log((alt + eps) * (1 - ref + eps) / ((1 - alt + eps) * (ref + eps)))


def effect(alt, ref, mode):
    """``logfold`` (mode ``logfold``) or ``alt - ref`` (mode ``diff``); broadcasts ``ref``."""
    if mode == "logfold":
        return logfold(alt, ref)
    if mode == "diff":
        return alt - ref
    raise ValueError(f"unknown target mode {mode!r}")


def pick_device(requested="auto"):
    """``cuda`` when present (or asked for), else ``cpu``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def mutate(onehot, offsets, alts):
    """Copies of ``onehot [4, L]`` with base ``alts[i]`` put at ``offsets[i]``: ``[M, 4, L]``."""
    batch = onehot.unsqueeze(0).repeat(len(offsets), 1, 1)
    rows = torch.arange(len(offsets), device=onehot.device)
    batch[rows, :, offsets] = 0
    batch[rows, alts, offsets] = 1
    return batch


@torch.no_grad()
def naive_substitution_predictions(model, onehot, offsets, alts, batch_size=256):
    """Outputs ``[M, F]`` of the model on each mutated copy of ``onehot [4, L]``, by full forward
    passes in batches of ``batch_size`` mutants."""
    out = []
    for i in range(0, len(offsets), batch_size):
        out.append(model(mutate(onehot, offsets[i:i + batch_size], alts[i:i + batch_size])))
    if not out:
        return torch.empty(0, 0, device=onehot.device)
    return torch.cat(out)


@torch.no_grad()
def predict_substitutions(model, onehot, offsets, alts, method="naive", batch_size=256):
    """Reference outputs ``[F]`` and substitution outputs ``[M, F]`` for ``onehot [4, L]``.

    ``offsets``/``alts``: int64 tensors ``[M]`` on the model's device (0-based position, base
    index in A,G,C,T order). ``method``: ``fast`` (exact incremental ISM, ``seqmux.fast_ism``;
    models it cannot analyse fall back to naive ISM with one log line) or ``naive`` (one full
    forward pass per substitution, in batches of ``batch_size``; fast ISM processes chunks of
    ``batch_size`` mutants).
    """
    ref = model(onehot.unsqueeze(0))[0]
    if method == "fast":
        from .fast_ism import fast_substitution_predictions

        alt = fast_substitution_predictions(model, onehot, offsets, alts, ref, batch_size)
        if alt is None:  # not analysable (logged once): naive ISM gives the same values
            alt = naive_substitution_predictions(model, onehot, offsets, alts, batch_size)
    elif method == "naive":
        alt = naive_substitution_predictions(model, onehot, offsets, alts, batch_size)
    else:
        raise ValueError(f"unknown ISM method {method!r}")
    return ref, alt


def scatter_targets(ref, alt, offsets, alts, length, mode="logfold"):
    """Target ``[F, 4, L]`` (dtype of ``alt``) from ``ref [F]`` and substitution outputs ``alt [M, F]``;
    substitutions not listed (identity) stay exactly 0."""
    target = torch.zeros(ref.shape[0], 4, length, dtype=alt.dtype, device=ref.device)
    if len(offsets):
        target[:, alts, offsets] = effect(alt, ref[None, :], mode).T
    return target


@torch.no_grad()
def window_targets(model, tokens, offsets, alts, mode="logfold", method="fast", batch_size=256, device="cpu"):
    """``(reference [F], target [F, 4, L])`` numpy arrays for one window's tokens ``[L]`` and its
    substitutions (numpy ``offsets``, ``alts``), computed in the model's dtype (float32, or
    float64 for a ``model.double()``)."""
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = torch.from_numpy(one_hot(tokens)).to(device, dtype)
    off = torch.from_numpy(np.asarray(offsets, dtype=np.int64)).to(device)
    alt_idx = torch.from_numpy(np.asarray(alts, dtype=np.int64)).to(device)
    ref, alt = predict_substitutions(model, x, off, alt_idx, method, batch_size)
    target = scatter_targets(ref, alt, off, alt_idx, x.shape[-1], mode)
    return ref.cpu().numpy(), target.cpu().numpy()


def target_schema(n_outputs, length, dtype="float16", metadata=None):
    """Arrow schema of a target shard: window_id, reference_prediction [F], target [F*4*L]."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("window_id", pa.int64()),
        ("reference_prediction", pa.list_(pa.float32(), n_outputs)),
        ("target", pa.list_(value, n_outputs * 4 * length)),
    ], metadata=metadata)


def fixed_list(values, width, dtype):
    """A FixedSizeListArray of rows of ``width`` from a flat numpy array."""
    values = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(values), width)


def progress(iterable, total, desc):
    """A tqdm bar that stays readable in a log file (few lines when not on a terminal)."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, mininterval=0.5 if interactive else 15,
                dynamic_ncols=interactive, file=sys.stderr)


@torch.no_grad()
def compute_target_shard(model, windows, tokens, variants, out_path, names, mode="logfold", dtype="float16",
                         method="fast", batch_size=256, device="cpu"):
    """Write the targets of ``windows`` to an Arrow IPC file, one record batch per window.

    ``tokens``: ``[N, L]`` uint8 (memory-mapped is fine), indexed by window id. ``variants``: an
    Arrow table with columns window_id (sorted), offset, alt_index. Peak memory is one window's
    target plus one batch of mutants, whatever the number of windows.
    """
    model = model.to(device).eval()
    length = tokens.shape[1]
    n_out = len(names)
    meta = {b"n_outputs": str(n_out).encode(), b"length": str(length).encode(), b"mode": mode.encode()}
    schema = target_schema(n_out, length, dtype, meta)
    wids = variants.column("window_id").to_numpy()
    offsets_all = variants.column("offset").to_numpy()
    alts_all = variants.column("alt_index").to_numpy()
    np_dtype = np.float16 if dtype == "float16" else np.float32
    with pa.OSFile(str(out_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for w in progress(windows, len(windows), f"ISM ({method}, {device})"):
            lo, hi = np.searchsorted(wids, [w.window_id, w.window_id + 1])
            ref, target = window_targets(model, tokens[w.window_id], offsets_all[lo:hi], alts_all[lo:hi],
                                         mode, method, batch_size, device)
            if ref.shape[0] != n_out:
                raise ValueError(f"model has {ref.shape[0]} outputs but {n_out} output names")
            if not np.all(np.isfinite(target)):
                raise FloatingPointError(f"non-finite target in window {w.window_id}")
            writer.write_batch(pa.record_batch([
                pa.array([w.window_id], pa.int64()),
                fixed_list(ref, n_out, np.float32),
                fixed_list(target, n_out * 4 * length, np_dtype),
            ], schema=schema))
    log.info("wrote targets of %d windows to %s", len(windows), out_path)


def compute_targets(windows_bed, tokens_npy, variants, out, shard, n_shards, base_model, mode="logfold",
                    dtype="float16", method="fast", batch_size=256, device="auto", precision="float32"):
    """Stage: ISM targets of one shard's windows.

    ``base_model``: dict with ``kind``, ``weights``, ``module``, ``class``, ``names`` (the config
    section, paths resolved). ``precision``: ``float32`` or ``float64`` arithmetic in the model.
    """
    import os

    from .models import build_base_model, count_outputs, output_names
    from .windows import read_windows, shard_windows

    windows = shard_windows(read_windows(windows_bed), shard, n_shards)
    tokens = np.load(tokens_npy, mmap_mode="r")
    length = tokens.shape[1]
    model = build_base_model(base_model["kind"], base_model.get("weights", ""), base_model.get("module", ""),
                             base_model.get("class", ""), length)
    names = output_names(base_model["kind"], base_model.get("names", ""), count_outputs(model, length))
    model = model.to(torch.float64 if precision == "float64" else torch.float32)
    dev = pick_device(device)
    log.info("shard %d/%d: %d windows of %d bp, %d outputs, %s ISM in %s on %s", shard + 1, n_shards,
             len(windows), length, len(names), method, precision, dev)
    with pa.memory_map(str(variants), "r") as src:
        table = pa.ipc.open_file(src).read_all()
    tmp = f"{out}.tmp"
    compute_target_shard(model, windows, tokens, table, tmp, names, mode, dtype, method, batch_size, dev)
    os.replace(tmp, out)
