"""The split contract: a split is a directory of shards read as one memory-mapped table; only the
substitutions are stored ([F, 3, L], plus the fourth substitution of N positions), and readers
restore [F, 4, L] with exact zeros at the identity substitutions."""

import numpy as np
import pyarrow as pa
import pytest

from seqmux.encoding import N_TOKEN, tokenize
from seqmux.splits import (SplitDataset, check_split, open_split, pack_target, split_batch, split_info, split_schema,
                           targets_of, unpack_target)


def exact_target(tokens, n_out, rng):
    """A random target [F, 4, L] with the identity substitutions exactly 0 (none at N)."""
    target = rng.standard_normal((n_out, 4, len(tokens))).astype(np.float32)
    for p, t in enumerate(tokens):
        if t != N_TOKEN:
            target[:, t, p] = 0.0
    return target


def write_shard(path, rows, names, length, dtype="float32"):
    schema = split_schema(len(names), length, dtype, names, "logfold", "demo")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for wid, chrom, tokens, ref, target in rows:
            writer.write_batch(split_batch(schema, wid, chrom, 100 * wid, 100 * wid + length, tokens, ref, target))
    return path


@pytest.mark.parametrize("sequence", ["ACGTACGTGG", "NNGGCCTTNA", "NNNNNNNNNN", "acgtRYacgt"])
def test_pack_and_unpack_are_exact(sequence):
    tokens = tokenize(sequence)
    target = exact_target(tokens, 3, np.random.default_rng(len(sequence)))
    stored, fourth = pack_target(target, tokens)
    n_count = int((tokens == N_TOKEN).sum())
    assert stored.shape == (3, 3, 10) and fourth.shape == (3, n_count)
    assert stored.size + fourth.size == 3 * (3 * 10 + n_count)      # every substitution, once
    back = unpack_target(stored.reshape(3, -1), fourth.reshape(-1), tokens)
    assert np.array_equal(back, target)


def test_a_split_is_its_shards_read_as_one_table(tmp_path):
    names, length = ["a", "b", "c"], 10
    rng = np.random.default_rng(0)
    seqs = ["ACGTACGTAC", "NNGGCCTTNA", "acgtacgtac"]
    rows = [(i, "chr1", tokenize(s), rng.random(3), exact_target(tokenize(s), 3, rng)) for i, s in enumerate(seqs)]
    (tmp_path / "train").mkdir()
    write_shard(tmp_path / "train/0000.feather", rows[:2], names, length, "float16")
    write_shard(tmp_path / "train/0001.feather", rows[2:], names, length, "float16")
    write_shard(tmp_path / "train/0002.feather", [], names, length, "float16")      # an empty shard
    table = open_split(tmp_path / "train")
    assert table.num_rows == 3 and table.column("sequence").to_pylist() == ["ACGTACGTAC", "NNGGCCTTNA", "ACGTACGTAC"]
    assert split_info(table) == dict(n_outputs=3, length=10, mode="logfold", dtype="float16",
                                     output_names=names, base_model="demo")
    got = targets_of(table)
    assert got.shape == (3, 3, 4, 10)
    for i, (_, _, tokens, _, target) in enumerate(rows):
        assert np.allclose(got[i], target, atol=3e-3)                    # float16 storage
        identity = [(t, p) for p, t in enumerate(tokens) if t != N_TOKEN]
        assert all(np.all(got[i][:, t, p] == 0) for t, p in identity)   # exactly 0
    assert np.array_equal(targets_of(table, [2, 0]), got[[2, 0]])
    ds = SplitDataset(table)
    assert len(ds) == 3 and np.array_equal(ds.target(1), got[1]) and ds.onehot(1)[:, 0].sum() == 0   # N
    # the same split given as its list of shards, and as one shard
    paths = sorted((tmp_path / "train").glob("*.feather"))
    assert open_split(paths).equals(table)
    assert open_split(paths[1]).num_rows == 1
    # targets are stored once: 3 slots a position (and the 4th at each of the 3 N's)
    stored = sum(len(r) for r in table.column("target").to_pylist())
    assert stored == 3 * 3 * 3 * 10 and sum(len(r) for r in table.column("target_n").to_pylist()) == 3 * 3


def test_an_empty_split_keeps_the_schema(tmp_path):
    (tmp_path / "validation").mkdir()
    write_shard(tmp_path / "validation/0000.feather", [], ["a"], 8)
    write_shard(tmp_path / "validation/0001.feather", [], ["a"], 8)
    table, info = check_split(tmp_path / "validation")
    assert table.num_rows == 0 and info["length"] == 8 and targets_of(table).shape == (0, 1, 4, 8)


def test_a_missing_shard_is_one_clear_error(tmp_path):
    from seqmux.errors import InputError

    write_shard(tmp_path / "0000.feather", [], ["a"], 8)
    with pytest.raises(InputError, match="0001.feather.*split shard not found"):
        check_split([tmp_path / "0000.feather", tmp_path / "0001.feather"], "train split")
    (tmp_path / "bad.feather").write_bytes(b"not arrow")
    with pytest.raises(InputError, match="not a readable split shard"):
        check_split([tmp_path / "bad.feather"], "train split")


def test_reading_batches_takes_memory_flat_in_the_number_of_windows(tmp_path):
    """Training's reader over a split of N and of 4N windows (several shards, memory-mapped): the
    Python heap's peak while every window is read in batches of 4 stays that of a few batches,
    not of the split (which is 4x bigger the second time)."""
    import tracemalloc

    import torch

    names, length = [f"o{i}" for i in range(16)], 256
    rng = np.random.default_rng(1)

    def split_of(n, folder):
        folder.mkdir()
        for shard in range(4):
            rows = []
            for i in range(shard * n // 4, (shard + 1) * n // 4):
                tokens = rng.integers(0, 4, length).astype(np.uint8)
                rows.append((i, "chr1", tokens, rng.random(16), exact_target(tokens, 16, rng)))
            write_shard(folder / f"{shard:04d}.feather", rows, names, length)
        return folder

    peaks = {}
    for n in (16, 64):
        folder = split_of(n, tmp_path / f"n{n}")
        tracemalloc.start()
        ds = SplitDataset(open_split(folder))
        loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
        total = sum(float(y.abs().sum()) for _, y in loader)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total > 0 and len(ds) == n
    split_bytes = 64 * 16 * 4 * length * 4
    batch_bytes = 4 * 16 * 4 * length * 4
    assert peaks[64] < 1.3 * peaks[16] + 64 * 1024, peaks
    assert peaks[64] < split_bytes / 4 and peaks[64] < 12 * batch_bytes, (peaks, batch_bytes)
