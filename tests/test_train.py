import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mux_synthetic import tiny_splits, write_empty_split, write_split
from seqmux import checkpoint
from seqmux.errors import InputError
from seqmux.multiplexer import load_multiplexer
from seqmux.train import KILL_ENV, RESUME_KIND, ExponentialAverage, StepBatches, train_multiplexer

REPO = Path(__file__).resolve().parents[1]
SIZES = dict(widths=[8, 8], dilations=[1, 2], kernel=4)
# ema on: the resume test checks that the average goes on from the checkpoint too
ARGS = dict(preset="demo", sizes=SIZES, lr=3e-3, batch_size=4, steps=8, validate_every=2, patience=0, seed=7, ema=0.9)


def outputs(d):
    d = Path(d)
    return [d / "model.pt", d / "last.pt", d / "log.csv", d / "loss.png"]


def run_training(splits, out_dir, checkpoint_dir, kill_after=None):
    """Train in a fresh Python process (one thread), optionally SIGKILLed after a step."""
    script = textwrap.dedent(f"""
        import json, torch
        torch.set_num_threads(1)
        from seqmux.train import train_multiplexer
        facts = train_multiplexer({str(splits['train'])!r}, {str(splits['validation'])!r},
                                  *{[str(p) for p in outputs(out_dir)]!r}, {str(checkpoint_dir)!r}, **{ARGS!r})
        print("FACTS" + json.dumps(facts))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(KILL_ENV, None)
    if kill_after:
        env[KILL_ENV] = str(kill_after)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    facts = None
    for line in proc.stdout.splitlines():
        if line.startswith("FACTS"):
            facts = json.loads(line[5:])
    return proc, facts


def test_resume_after_kill_continues_from_checkpoint(tmp_path):
    splits = tiny_splits(tmp_path)
    # killed right after step 5: the last checkpoint is the one of step 4
    proc, facts = run_training(splits, tmp_path / "out", tmp_path / "ck", kill_after=5)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert facts is None and not (tmp_path / "out" / "model.pt").exists()
    _, meta = checkpoint.load(tmp_path / "ck" / "last.pt", RESUME_KIND)  # weights_only: nothing pickled runs
    assert meta["progress"]["step"] == 4 and not meta["progress"]["done"]
    # the rerun resumes at step 4 and finishes the 8 steps
    proc, facts = run_training(splits, tmp_path / "out", tmp_path / "ck")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert facts["resumed_from_step"] == 4 and facts["steps_done"] == 8
    with open(tmp_path / "out" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 9))  # steps 5.. of the killed run are not logged twice
    # ... and ends exactly where an uninterrupted run ends (same batches, same RNG, same state; the
    # uninterrupted run and the rerun in this process, on one thread as the killed one: no process
    # start, which is most of this test's time)
    torch.set_num_threads(1)
    ref = train_multiplexer(splits["train"], splits["validation"], *outputs(tmp_path / "ref"), tmp_path / "ck_ref",
                            **ARGS)
    assert ref["resumed_from_step"] is None
    a, b = (checkpoint.load(d / "last.pt", "multiplexer")[0] for d in (tmp_path / "out", tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert facts["best_step"] == ref["best_step"]
    # a finished run reruns without training again
    again = train_multiplexer(splits["train"], splits["validation"], *outputs(tmp_path / "out"), tmp_path / "ck",
                              **ARGS)
    assert again["resumed_from_step"] == 8 and again["steps_done"] == 8


def test_training_outputs_and_new_config_starts_over(tmp_path):
    torch.set_num_threads(1)
    splits = tiny_splits(tmp_path)
    args = dict(ARGS, steps=6, validate_every=3)
    facts = train_multiplexer(splits["train"], splits["validation"], *outputs(tmp_path / "a"), tmp_path / "ck", **args)
    assert facts["steps_done"] == 6 and facts["best_step"] in (3, 6)
    model, info = load_multiplexer(tmp_path / "a" / "model.pt")
    assert info["output_names"] == ["out_0", "out_1"] and info["length"] == 32
    assert model(torch.zeros(2, 4, 32)).shape == (2, 2, 4, 32)
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    facts = train_multiplexer(splits["train"], splits["validation"], *outputs(tmp_path / "b"), tmp_path / "ck",
                              **dict(args, lr=1e-3))
    assert facts["resumed_from_step"] is None  # another learning rate: the old checkpoint is not reused


def test_early_stopping(tmp_path):
    torch.set_num_threads(1)
    splits = tiny_splits(tmp_path)
    facts = train_multiplexer(splits["train"], splits["validation"], *outputs(tmp_path / "o"), tmp_path / "ck",
                              **dict(ARGS, lr=5.0, steps=40, validate_every=1, patience=2))
    assert facts["steps_done"] < 40
    assert facts["steps_done"] - facts["best_step"] == 2


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatches(10, 4, 3, 0, 9))
    assert list(StepBatches(10, 4, 3, 5, 9)) == full[5:]
    assert all(len(b) == 4 for b in full)
    assert len(set(full[0] + full[1])) == 8  # one epoch (2 batches of 4 of 10 windows) draws no window twice
    assert full[:2] != full[2:4]  # each epoch has its own permutation


def test_bad_inputs(tmp_path):
    splits = tiny_splits(tmp_path)
    def run(train, val):
        return train_multiplexer(train, val, *outputs(tmp_path / "o"), tmp_path / "ck", **ARGS)
    with pytest.raises(InputError, match=r"missing\.feather: train split=.*split shard not found"):
        run(tmp_path / "missing.feather", splits["validation"])
    empty = write_empty_split(tmp_path / "empty.feather", 32, ["out_0", "out_1"])
    with pytest.raises(InputError, match=r"empty\.feather: rows=0: the train split is empty"):
        run(empty, splits["validation"])
    (tmp_path / "l").mkdir()
    longer = tiny_splits(tmp_path / "l", length=40)
    with pytest.raises(InputError, match=r"validation\.feather: length=40: the train split .* has 32"):
        run(splits["train"], longer["validation"])
    other = write_split(tmp_path / "f3.feather", ["A" * 32], np.zeros((1, 3, 4, 32), np.float32), ["a", "b", "c"])
    with pytest.raises(InputError, match=r"f3\.feather: n_outputs=3"):
        run(splits["train"], other)
    garbage = tmp_path / "garbage.feather"
    garbage.write_text("not arrow")
    with pytest.raises(InputError, match="not a readable split shard"):
        run(garbage, splits["validation"])


def test_exponential_average_follows_its_formula_and_is_what_is_written(tmp_path):
    """``avg <- avg + (1 - d) (w - avg)``, ``d = min(decay, (1 + n) / (10 + n))``, on parameters and
    BatchNorm statistics (the step counter copied); the written ``model.pt`` / ``model_last.pt`` hold
    the average, not the last weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = ExponentialAverage(model, 0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(3):
        model.train()(torch.randn(8, 3))  # moves the BatchNorm statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = min(0.5, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            expected[k] = expected[k] + (1 - d) * (v - expected[k]) if v.is_floating_point() else v.clone()
    got = avg.model.state_dict()
    # three lerps in float32 against the same formula written out: a few ulps apart at most
    assert all(torch.allclose(got[k].float(), expected[k].float(), rtol=1e-5, atol=1e-6) for k in got)
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])
    assert int(got["1.num_batches_tracked"]) == 3
    assert not any(p.requires_grad for p in avg.model.parameters())

    splits = tiny_splits(tmp_path)
    facts = {}
    for ema in (0.0, 0.9):
        out = tmp_path / f"ema{ema}"
        facts[ema] = train_multiplexer(splits["train"], splits["validation"], *outputs(out), out / "ck",
                                       **dict(ARGS, ema=ema))
    last = {ema: checkpoint.load(tmp_path / f"ema{ema}" / "last.pt", "multiplexer")[0] for ema in facts}
    assert any(not torch.equal(last[0.0][k], last[0.9][k]) for k in last[0.0] if k.endswith("weight"))
    assert facts[0.9]["hparams"]["ema"] == 0.9 and "ema" not in facts[0.0]["hparams"]


def test_mixed_precision_on_a_cpu_only_where_it_multiplies_bfloat16(monkeypatch):
    import seqmux.train as train

    conv = torch.nn.Conv1d(4, 3, 5)
    x = torch.randn(2, 4, 20)
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    context, scaler = train.autocast_for(cpu, True)
    with context():
        assert conv(x).dtype == torch.bfloat16 and scaler is None
    context, _ = train.autocast_for(cpu, False)  # amp: false, float32 everywhere
    with context():
        assert conv(x).dtype == torch.float32
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)  # emulated bfloat16: float32
    context, _ = train.autocast_for(cpu, True)
    with context():
        assert conv(x).dtype == torch.float32
    # the probe answers from the CPU's flags without failing
    monkeypatch.undo()
    assert train.cpu_has_native_bf16() in (True, False)
