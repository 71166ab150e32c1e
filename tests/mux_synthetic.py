"""Tiny synthetic split files and base models for the Multiplexer tests (no workflow run)."""

import numpy as np
import pyarrow as pa
import torch

from seqmux.encoding import detokenize, tokenize
from seqmux.splits import split_batch, split_schema

SPLITS = ("train", "validation", "test")


def write_split(path, sequences, targets, names, mode="logfold", dtype="float32", first_id=0, chrom="chr1"):
    """A split file with one row per sequence; ``targets`` ``[n, F, 4, L]``."""
    n_out, length = len(names), targets.shape[-1] if len(targets) else len(sequences[0]) if sequences else 8
    schema = split_schema(n_out, length, dtype, names, mode, "demo")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for i, (seq, target) in enumerate(zip(sequences, targets)):
            start = 1000 * i
            writer.write_batch(split_batch(schema, first_id + i, chrom, start, start + length, tokenize(seq),
                                           np.zeros(n_out), target))
    return path


def write_empty_split(path, length, names, mode="logfold"):
    schema = split_schema(len(names), length, "float32", names, mode, "demo")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema):
        pass
    return path


def random_sequences(n, length, rng):
    return [detokenize(rng.integers(0, 4, length)) for _ in range(n)]


def synthetic_targets(sequences, n_out, rng_seed=0):
    """A learnable toy effect: putting base ``a`` at ``p`` scores ``w[f, a]`` times a positional
    weight, minus the same for the reference base (identity entries exactly 0)."""
    from seqmux.encoding import one_hot, tokenize

    rng = np.random.default_rng(rng_seed)
    w = rng.standard_normal((n_out, 4, 1))
    out = []
    for seq in sequences:
        x = one_hot(tokenize(seq))  # [4, L]
        length = x.shape[1]
        pos = np.linspace(0.5, 1.5, length)[None, None, :]
        ref = (w * x[None]).sum(axis=1, keepdims=True)
        out.append(((w - ref) * pos).astype(np.float32))
    return np.stack(out) if out else np.zeros((0, n_out, 4, 0), np.float32)


def tiny_splits(directory, length=32, n_out=2, counts=(24, 6, 6), seed=0):
    """``{split: path}`` of small random splits with ``synthetic_targets``."""
    rng = np.random.default_rng(seed)
    names = [f"out_{i}" for i in range(n_out)]
    paths = {}
    first = 0
    for split, n in zip(SPLITS, counts):
        seqs = random_sequences(n, length, rng)
        path = directory / f"{split}.feather"
        if n:
            write_split(path, seqs, synthetic_targets(seqs, n_out), names, first_id=first)
        else:
            write_empty_split(path, length, names)
        paths[split] = path
        first += n
    return paths


def tiny_base_model(path, length=320, n_out=2, seed=0):
    """A small random ``BelugaFamily`` base model saved with ``save_model`` (kind ``demo``)."""
    from seqmux.models import BelugaFamily, save_model

    torch.manual_seed(seed)
    model = BelugaFamily(length, (8, 8, 8), 8, 4, 8, n_out).eval()
    save_model(model, path)
    return model


def ism_splits(directory, model, length=320, counts=(8, 3, 3), seed=0, dtype="float32"):
    """Splits whose targets are exact naive ISM of ``model`` (as the workflow computes them)."""
    from seqmux.encoding import tokenize
    from seqmux.ism import window_targets
    from seqmux.variants import substitutions

    rng = np.random.default_rng(seed)
    n_out = model(torch.zeros(1, 4, length)).shape[1]
    names = [f"out_{i}" for i in range(n_out)]
    paths, first = {}, 0
    for split, n in zip(SPLITS, counts):
        seqs = random_sequences(n, length, rng)
        path = directory / f"{split}.feather"
        if n:
            targets = []
            for seq in seqs:
                tok = tokenize(seq)
                offsets, alts = substitutions(tok)
                targets.append(window_targets(model, tok, offsets, alts, "logfold", "naive", 512)[1])
            write_split(path, seqs, np.stack(targets).astype(np.float32), names, dtype=dtype, first_id=first)
        else:
            write_empty_split(path, length, names)
        paths[split] = path
        first += n
    return paths
