"""Diagnostic: which of the strongest effects a Multiplexer misses, by what the substitution does to
the base model's first convolution (for the demo base model: its motif filters).

For every output, the substitutions whose exact ``|effect|`` is in the top 1% of a split (the set
``top1pct_recall`` scores, identity entries excluded) are put in three classes by the change of the
first convolution's ReLU activations over the alignments that cover the substituted base:

- ``creates``: the activations gained are more than twice those lost (a motif match made);
- ``destroys``: those lost are more than twice those gained (a match broken);
- ``mixed``: neither.

Per class it prints the share of the top 1%, the recall (the fraction also in the Multiplexer's top
1% of that output) and the median and interquartile range of predicted / exact. The validation
split by default: a recipe is chosen there, and the test split is read once, by the benchmark.

The base model's first layer must be a ``Conv1d`` or ``Conv2d`` of stride 1, no padding and no
dilation, followed by a ReLU (the Beluga family, the demo model included).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mux_misses.py /tmp/mux_run \\
        /tmp/mux_run/results/multiplexer/model.pt
"""

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqmux.evaluate import split_batches
from seqmux.models import build_base_model
from seqmux.multiplexer import load_multiplexer
from seqmux.splits import SplitDataset, check_split
from seqmux.metrics import non_identity_mask, top_fraction

CLASSES = ("creates", "destroys", "mixed")


def first_conv(model):
    """The first convolution of ``model`` as ``(weight [C, 4, K], bias [C])``; SystemExit unless it
    is a plain one (stride 1, no padding, no dilation)."""
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))), None)
    if conv is None:
        raise SystemExit("the base model has no convolution")
    plain = all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation) and \
        not isinstance(conv.padding, str) and all(p == 0 for p in conv.padding)
    if not plain or conv.in_channels != 4 or conv.groups != 1:
        raise SystemExit(f"the base model's first convolution is not a plain one on one-hot DNA: {conv}")
    weight = conv.weight.detach().reshape(conv.out_channels, 4, -1).double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    return weight, bias


def activation_change(weight, bias, onehot, rows, bases, positions):
    """Per substitution ``(rows[i], bases[i], positions[i])`` of ``onehot`` ``[N, 4, L]``: the summed
    ReLU activations of the first convolution gained and lost (two arrays ``[n]``) over its valid
    alignments that cover the substituted position."""
    k = weight.shape[-1]
    length = onehot.shape[-1]
    offsets = np.arange(-(k - 1), k)  # the 2K - 1 bases around the position
    cols = positions[:, None] + offsets[None, :]
    inside = (cols >= 0) & (cols < length)
    local = onehot[rows[:, None], :, np.clip(cols, 0, length - 1)]  # [n, 2K - 1, 4]
    local = torch.from_numpy(np.where(inside[..., None], local, 0).astype(np.float64)).transpose(1, 2)
    alt = local.clone()
    alt[:, :, k - 1] = 0
    alt[torch.arange(len(rows)), torch.as_tensor(bases), k - 1] = 1
    ref_act = torch.relu(nn.functional.conv1d(local, weight, bias))  # [n, C, K]: alignment j starts at p - K + 1 + j
    alt_act = torch.relu(nn.functional.conv1d(alt, weight, bias))
    start = positions[:, None] - (k - 1) + np.arange(k)[None, :]
    valid = torch.from_numpy(((start >= 0) & (start + k <= length)).astype(np.float64))[:, None, :]
    diff = (alt_act - ref_act) * valid
    return diff.clamp(min=0).sum(dim=(1, 2)).numpy(), (-diff).clamp(min=0).sum(dim=(1, 2)).numpy()


def check_against_full_windows(weight, bias, onehot, rows, bases, positions, gained, lost):
    """The local computation against the first convolution run on the whole window (a few entries)."""
    for i in range(min(20, len(rows))):
        x = torch.from_numpy(onehot[rows[i]].astype(np.float64))[None]
        y = x.clone()
        y[0, :, positions[i]] = 0
        y[0, bases[i], positions[i]] = 1
        d = torch.relu(nn.functional.conv1d(y, weight, bias)) - torch.relu(nn.functional.conv1d(x, weight, bias))
        up, down = float(d.clamp(min=0).sum()), float((-d).clamp(min=0).sum())
        if not (np.isclose(up, gained[i]) and np.isclose(down, lost[i])):
            raise AssertionError(f"activation change of entry {i} differs from the whole-window computation")


def classify(gained, lost):
    return np.where(gained > 2 * lost, 0, np.where(lost > 2 * gained, 1, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a workflow run directory with results/splits (and the demo base model)")
    ap.add_argument("model", type=Path, help="a Multiplexer checkpoint (model.pt)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--base-model", type=Path, help="demo base model file (default: RUN/resources/demo/base_model.pt)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    base_path = args.base_model or args.run / "resources/demo/base_model.pt"
    weight, bias = first_conv(build_base_model("demo", str(base_path), "", "", None))
    model, _ = load_multiplexer(args.model)
    table, _ = check_split(args.run / "results/splits" / args.split)
    ds = SplitDataset(table)
    batches = list(split_batches(model, ds, list(range(len(ds))), torch.device("cpu"), 16))
    pred, exact, onehot = (np.concatenate(parts) for parts in zip(*batches))
    n, n_out, n_bases, length = exact.shape
    mask = non_identity_mask(onehot)[:, 0].ravel()  # [n, 4, L]: the substitutions
    flat = np.flatnonzero(mask)
    per_class = {c: dict(n=0, hit=0, ratio=[]) for c in range(3)}
    for f in range(n_out):
        e, p = exact[:, f].ravel()[flat], pred[:, f].ravel()[flat]
        true_top, pred_top = top_fraction(np.abs(e)), top_fraction(np.abs(p))
        hit = np.isin(true_top, pred_top)
        rows, bases, positions = np.unravel_index(flat[true_top], (n, n_bases, length))
        gained, lost = activation_change(weight, bias, onehot, rows, bases, positions)
        if f == 0:
            check_against_full_windows(weight, bias, onehot, rows, bases, positions, gained, lost)
        kind, ratio = classify(gained, lost), p[true_top] / e[true_top]
        for c in range(3):
            sel = kind == c
            per_class[c]["n"] += int(sel.sum())
            per_class[c]["hit"] += int(hit[sel].sum())
            per_class[c]["ratio"].extend(ratio[sel].tolist())
    total = sum(v["n"] for v in per_class.values())
    print(f"{args.model} on {args.split} ({n} windows, {n_out} outputs): the top 1% |exact effect|, {total} entries")
    print(f"{'class':<9} {'share':>6} {'recall':>7} {'pred/exact median':>18} {'IQR':>6}")
    for c, v in per_class.items():
        r = np.asarray(v["ratio"])
        q1, med, q3 = np.percentile(r, [25, 50, 75]) if len(r) else (0, 0, 0)
        print(f"{CLASSES[c]:<9} {v['n'] / max(total, 1):>6.3f} {v['hit'] / max(v['n'], 1):>7.3f} {med:>18.3f} "
              f"{q3 - q1:>6.3f}")
    print(f"{'all':<9} {1:>6.3f} {sum(v['hit'] for v in per_class.values()) / max(total, 1):>7.3f}")


if __name__ == "__main__":
    main()
