import numpy as np
import pytest

from seqmux.metrics import Metrics, all_metrics, average_ranks, per_profile_weighted_pearson, position_tracks


def direct_weighted_pearson(x, y, w):
    c = np.cov(x, y, aweights=w)
    return c[0, 1] / np.sqrt(c[0, 0] * c[1, 1])


def small_case(seed=0, n=5, n_out=3, length=7):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, (n, length))
    onehot = np.eye(4, dtype=np.float32)[tokens].transpose(0, 2, 1)  # [n, 4, L]
    exact = rng.standard_normal((n, n_out, 4, length)).astype(np.float32) * (1 - onehot)[:, None]
    pred = (exact + rng.standard_normal(exact.shape) * 0.7).astype(np.float32)
    return pred, exact, onehot


def test_weighted_pearson_matches_numpy():
    pred, exact, onehot = small_case()
    r = per_profile_weighted_pearson(pred, exact)
    for f in range(exact.shape[1]):
        x, y = pred[:, f].ravel().astype(np.float64), exact[:, f].ravel().astype(np.float64)
        assert r[f] == pytest.approx(direct_weighted_pearson(x, y, np.abs(y)), abs=1e-9)
    m = all_metrics(pred, exact, onehot)
    assert m["weighted_pearson_mean"] == pytest.approx(r.mean())
    assert m["weighted_pearson_median"] == pytest.approx(np.median(r))
    assert m["weighted_pearson_p10"] == pytest.approx(np.percentile(r, 10))


def test_identity_entries_do_not_count_and_batches_add_up():
    pred, exact, onehot = small_case(1)
    base = all_metrics(pred, exact, onehot)
    other = pred.copy()
    other += 100 * onehot[:, None]  # change only the identity (reference base) predictions
    changed = all_metrics(other, exact, onehot)
    for key in ("weighted_pearson_mean", "pearson", "spearman", "mse"):
        assert changed[key] == pytest.approx(base[key], abs=1e-9)
    streamed = Metrics(exact.shape[1], spearman_per_window=exact[0].size)
    streamed.update(pred[:2], exact[:2], onehot[:2])
    streamed.update(pred[2:], exact[2:], onehot[2:])
    got = streamed.result()
    for key in ("weighted_pearson_mean", "pearson", "spearman", "position_pearson", "mse"):
        assert got[key] == pytest.approx(base[key], abs=1e-9)


def test_overall_correlations_against_direct_computation():
    pred, exact, onehot = small_case(2)
    mask = np.broadcast_to((onehot == 0)[:, None], exact.shape)
    x, y = pred[mask].astype(np.float64), exact[mask].astype(np.float64)
    m = all_metrics(pred, exact, onehot)
    assert m["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
    rx, ry = average_ranks(x), average_ranks(y)
    assert m["spearman"] == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-9)
    assert m["mse"] == pytest.approx(np.mean((x - y) ** 2))
    tp, te = position_tracks(pred, onehot), position_tracks(exact, onehot)
    assert tp.shape == (5, 3, 7)
    assert m["position_pearson"] == pytest.approx(np.corrcoef(tp.ravel(), te.ravel())[0, 1], abs=1e-9)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert m["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)
    assert np.allclose(average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_constant_prediction_scores_zero():
    _, exact, onehot = small_case(3)
    m = all_metrics(np.zeros_like(exact), exact, onehot)
    assert m["weighted_pearson_mean"] == 0 and m["pearson"] == 0 and m["spearman"] == 0
    assert m["mse"] == pytest.approx(np.mean(exact[np.broadcast_to((onehot == 0)[:, None], exact.shape)] ** 2))
