import numpy as np
import pyarrow as pa
import pytest

from seqmux.encoding import tokenize
from seqmux.ism import fixed_list, target_schema
from seqmux.splits import assemble_splits, open_split, split_info, targets_of
from seqmux.windows import Window


def write_shard(path, rows, n_out, length, meta):
    schema = target_schema(n_out, length, "float32", meta)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for wid, ref, target in rows:
            writer.write_batch(pa.record_batch([pa.array([wid], pa.int64()), fixed_list(ref, n_out, np.float32),
                                                fixed_list(target, n_out * 4 * length, np.float32)], schema=schema))


def test_assemble_routes_rows_and_keeps_layout(tmp_path):
    n_out, length = 3, 8
    windows = [Window(0, "train", "chr1", 0, 8), Window(1, "train", "chr1", 10, 18), Window(2, "test", "chr9", 5, 13)]
    tokens = np.stack([tokenize("ACGTACGT"), tokenize("NNGGCCTT"), tokenize("acgtacgt")])
    rng = np.random.default_rng(0)
    rows = [(w.window_id, rng.random(n_out), rng.standard_normal((n_out, 4, length))) for w in windows]
    meta = {b"n_outputs": b"3", b"length": b"8", b"mode": b"logfold"}
    write_shard(tmp_path / "s0.arrow", rows[:2], n_out, length, meta)
    write_shard(tmp_path / "s1.arrow", rows[2:], n_out, length, meta)
    outs = {s: tmp_path / f"{s}.feather" for s in ("train", "validation", "test")}
    counts = assemble_splits(windows, tokens, [tmp_path / "s0.arrow", tmp_path / "s1.arrow"], outs,
                             ["a", "b", "c"], "logfold", "float16", "demo")
    assert counts == {"train": 2, "validation": 0, "test": 1}
    train = open_split(outs["train"])
    assert train.column("sequence").to_pylist() == ["ACGTACGT", "NNGGCCTT"]
    assert split_info(train) == dict(n_outputs=3, length=8, mode="logfold", dtype="float16",
                                     output_names=["a", "b", "c"], base_model="demo")
    got = targets_of(train)
    assert got.shape == (2, 3, 4, 8)
    assert np.allclose(got[1], rows[1][2], atol=2e-3)  # float16 storage
    # an empty split is an empty file with the same schema
    val = open_split(outs["validation"])
    assert val.num_rows == 0 and val.schema == train.schema
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_targets_leave_no_split(tmp_path):
    windows = [Window(0, "train", "chr1", 0, 8), Window(1, "test", "chr9", 0, 8)]
    tokens = np.stack([tokenize("ACGTACGT")] * 2)
    meta = {b"n_outputs": b"1", b"length": b"8", b"mode": b"logfold"}
    write_shard(tmp_path / "s0.arrow", [(0, np.zeros(1), np.zeros((1, 4, 8)))], 1, 8, meta)
    outs = {s: tmp_path / f"{s}.feather" for s in ("train", "validation", "test")}
    with pytest.raises(ValueError, match="1 windows have no targets"):
        assemble_splits(windows, tokens, [tmp_path / "s0.arrow"], outs, ["a"], "logfold", "float32", "demo")
    assert not list(tmp_path.glob("*.feather*"))
