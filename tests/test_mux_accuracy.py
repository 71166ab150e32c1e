"""The figures a variant scorer needs: r2, top1pct_recall, accuracy by distance from the window
centre, and the evaluation stage that writes them (metrics.json, metrics.tsv, two plots)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mux_synthetic import ism_splits, tiny_base_model
from seqmux.evaluate import evaluate_multiplexer
from seqmux.metrics import Metrics, all_metrics, distance_bin_of, per_profile_weighted_pearson, top_recall
from seqmux.multiplexer import build_multiplexer, save_multiplexer


def case(seed=0, n=6, n_out=3, length=40, noise=0.5):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, (n, length))
    onehot = np.eye(4, dtype=np.float32)[tokens].transpose(0, 2, 1)  # [n, 4, L]
    exact = (rng.standard_normal((n, n_out, 4, length)) ** 3).astype(np.float32) * (1 - onehot)[:, None]
    pred = (exact + rng.standard_normal(exact.shape) * noise).astype(np.float32)
    return pred, exact, onehot


def non_identity(values, onehot):
    return values[np.broadcast_to((onehot == 0)[:, None], values.shape)].astype(np.float64)


def direct_recall(pred, exact, onehot):
    """Per output: the ceil(n / 100) largest |exact| and |pred| of its non-identity entries."""
    out = []
    for f in range(exact.shape[1]):
        e, p = non_identity(exact[:, f:f + 1], onehot), non_identity(pred[:, f:f + 1], onehot)
        k = int(np.ceil(len(e) / 100))
        out.append(len(set(np.argsort(-np.abs(e))[:k]) & set(np.argsort(-np.abs(p))[:k])) / k)
    return np.mean(out)


def test_r2_against_direct_computation():
    pred, exact, onehot = case()
    m = all_metrics(pred, exact, onehot)
    e, p = non_identity(exact, onehot), non_identity(pred, onehot)
    assert m["r2"] == pytest.approx(1 - np.mean((p - e) ** 2) / np.mean(e ** 2), abs=1e-12)
    assert 0 < m["r2"] < 1
    assert all_metrics(exact, exact, onehot)["r2"] == 1.0
    assert all_metrics(np.zeros_like(exact), exact, onehot)["r2"] == 0.0
    assert all_metrics(-exact, exact, onehot)["r2"] == pytest.approx(-3.0)  # worse than predicting 0


def test_top1pct_recall_against_direct_computation():
    pred, exact, onehot = case(1, noise=1.0)
    m = all_metrics(pred, exact, onehot)
    assert m["top1pct_recall"] == pytest.approx(direct_recall(pred, exact, onehot), abs=1e-12)
    assert 0 < m["top1pct_recall"] < 1
    # the strongest effects predicted at any monotone size are all found; a constant prediction finds none
    assert all_metrics(0.1 * exact ** 3, exact, onehot)["top1pct_recall"] == 1.0
    assert all_metrics(np.zeros_like(exact), exact, onehot)["top1pct_recall"] == 0.0
    # drawing the strongest effects faint (what the published recipe does) loses them
    faint = exact.copy()
    for f in range(exact.shape[1]):
        block = faint[:, f]
        cut = np.quantile(np.abs(block[block != 0]), 0.99)
        block[np.abs(block) >= cut] *= 0.01
    assert all_metrics(faint, exact, onehot)["top1pct_recall"] == 0.0
    # entries of each output are ranked within that output only
    scaled = exact * np.array([1.0, 100.0, 1e4], dtype=np.float32)[None, :, None, None]
    assert top_recall(scaled.ravel(), exact.ravel(), np.repeat(np.arange(3), exact[0, 0].size)[None].repeat(6, 0)
                      .ravel(), 3) == 1.0


def test_streamed_batches_equal_one_pass_and_strongest_set():
    pred, exact, onehot = case(2)
    whole = all_metrics(pred, exact, onehot)
    streamed = Metrics(exact.shape[1], spearman_per_window=exact[0].size, distance_bins=4)
    streamed.update(pred[:2], exact[:2], onehot[:2])
    streamed.update(pred[2:], exact[2:], onehot[2:])
    got = streamed.result()
    for key in ("r2", "top1pct_recall"):
        assert got[key] == pytest.approx(whole[key], abs=1e-12)
    top_pred, top_exact, profile = streamed.strongest(0.01)
    for f in range(exact.shape[1]):
        e = non_identity(exact[:, f:f + 1], onehot)
        k = int(np.ceil(len(e) / 100))
        assert sorted(np.abs(top_exact[profile == f])) == pytest.approx(sorted(np.sort(np.abs(e))[-k:]))


def test_accuracy_by_distance_bins():
    assert list(distance_bin_of(8, 2)) == [1, 1, 0, 0, 0, 0, 1, 1]
    assert list(distance_bin_of(9, 3)) == [2, 2, 1, 0, 0, 0, 1, 2, 2]  # |p - 4| in bins of 1.5 bp
    pred, exact, onehot = case(3, length=40)
    # exact in the middle, noisy towards the ends: accuracy falls with distance
    ramp = np.abs(np.arange(40) + 0.5 - 20) / 20
    pred = (exact + np.random.default_rng(0).standard_normal(exact.shape) * 2 * ramp).astype(np.float32)
    m = Metrics(exact.shape[1], distance_bins=4)
    m.update(pred, exact, onehot)
    by = m.result()["by_distance"]
    assert by["distance_from_bp"] == [0, 5, 10, 15] and by["distance_to_bp"] == [5, 10, 15, 20]
    bins = distance_bin_of(40, 4)
    for b in range(4):
        cols = bins == b
        r = per_profile_weighted_pearson(pred[..., cols], exact[..., cols]).mean()
        assert by["weighted_pearson_mean"][b] == pytest.approx(r, abs=1e-9)
        e, p = non_identity(exact[..., cols], onehot[..., cols]), non_identity(pred[..., cols], onehot[..., cols])
        assert by["r2"][b] == pytest.approx(1 - np.sum((p - e) ** 2) / np.sum(e ** 2), abs=1e-9)
        assert by["substitutions"][b] == e.size
    assert sum(by["substitutions"]) == non_identity(exact, onehot).size
    assert by["r2"][0] > by["r2"][1] > by["r2"][2] > by["r2"][3]


def test_evaluation_writes_the_scorer_figures(tmp_path):
    torch.set_num_threads(1)
    base = tiny_base_model(tmp_path / "base.pt", length=320, n_out=2)
    splits = ism_splits(tmp_path, base, length=320, counts=(4, 2, 2))
    model = build_multiplexer("demo", 320, 2, dict(widths=[4, 4], dilations=[1, 2])).eval()
    save_multiplexer(model, tmp_path / "model.pt", ["out_0", "out_1"], "logfold", "demo")
    spec = dict(kind="demo", weights=str(tmp_path / "base.pt"), module="", names="")
    outs = [tmp_path / n for n in ("metrics.json", "metrics.tsv", "hexbin.png", "hist.png", "heatmap.png",
                                   "strongest.png", "distance.png")]
    evaluate_multiplexer(tmp_path / "model.pt", splits["train"], splits["validation"], splits["test"], spec,
                         *outs[:5], out_strongest=outs[5], out_distance=outs[6], batch_size=2, speed_windows=0,
                         seed=1, distance_bins=8)
    saved = json.loads(outs[0].read_text())
    for key in ("r2", "top1pct_recall"):
        assert np.isfinite(saved[key]) and key in saved["baselines"]["train_mean"]
    assert saved["baselines"]["zero"]["r2"] == 0 and saved["baselines"]["zero"]["top1pct_recall"] == 0
    by = saved["accuracy_by_distance"]
    assert len(by["weighted_pearson_mean"]) == len(by["r2"]) == 8 and by["distance_to_bp"][-1] == 160
    assert sum(by["substitutions"]) == 2 * 2 * 3 * 320
    table = pd.read_csv(outs[1], sep="\t", index_col="metric")
    assert table.loc["r2", "multiplexer"] == pytest.approx(saved["r2"], rel=1e-3, abs=1e-12)
    assert table.loc["top1pct_recall", "training_mean"] == pytest.approx(saved["baselines"]["train_mean"]
                                                                         ["top1pct_recall"], rel=1e-3, abs=1e-12)
    for png in outs[5:]:
        assert png.stat().st_size > 5000
