import json

import pandas as pd
import pytest
import torch

from mux_synthetic import ism_splits, tiny_base_model, write_empty_split
from seqmux.errors import InputError
from seqmux.evaluate import evaluate_multiplexer
from seqmux.multiplexer import build_multiplexer, save_multiplexer

KEYS = {"weighted_pearson_mean", "weighted_pearson_median", "weighted_pearson_p10", "pearson", "spearman",
        "position_pearson", "mse"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("evaluate")
    base = tiny_base_model(d / "base.pt", length=320, n_out=2)
    splits = ism_splits(d, base, length=320, counts=(4, 2, 2))
    model = build_multiplexer("demo", 320, 2, dict(widths=[4, 4], dilations=[1, 2])).eval()
    save_multiplexer(model, d / "model.pt", ["out_0", "out_1"], "logfold", "demo")
    spec = dict(kind="demo", weights=str(d / "base.pt"), module="", names="")
    return d, splits, spec


def run(d, splits, spec, test=None, model=None):
    outs = [d / n for n in ("metrics.json", "metrics.tsv", "hexbin.png", "hist.png", "heatmap.png")]
    return evaluate_multiplexer(model or d / "model.pt", splits["train"], splits["validation"], test or splits["test"],
                                spec, *outs, batch_size=2, speed_windows=2, seed=1), outs


def test_metrics_file_plots_and_speed(setup):
    d, splits, spec = setup
    result, outs = run(d, splits, spec)
    saved = json.loads(outs[0].read_text())
    assert KEYS <= set(saved) and saved["split"] == "test" and saved["windows"] == 2
    for name in ("zero", "train_mean"):
        assert KEYS <= set(saved["baselines"][name])
    assert saved["baselines"]["zero"]["weighted_pearson_mean"] == 0
    speed = saved["speed"]
    assert speed["windows"] == 2
    assert speed["speedup"] == pytest.approx(speed["ism_seconds"] / speed["multiplexer_seconds"],
                                                                         rel=0.02)
    assert speed["ism_check_max_abs_diff"] < 1e-4  # the ISM rerun reproduces the stored targets
    # and against the fastest exact answer, on the same windows in the same run
    assert speed["speedup_vs_fast_ism"] == pytest.approx(speed["fast_ism_seconds"] / speed["multiplexer_seconds"],
                                                         rel=0.02)
    assert speed["fast_ism_check_max_abs_diff"] < 1e-4
    assert speed["fast_ism_seconds"] < speed["ism_seconds"] and "conv" in speed["fast_ism_plan"]
    assert set(saved["per_profile"]) == {"out_0", "out_1"}
    for png in outs[2:]:
        assert png.stat().st_size > 5000
    # the report's table: the same figures, rounded to 4 significant digits, beside the baselines
    table = pd.read_csv(outs[1], sep="\t", index_col="metric")
    assert list(table.columns) == ["multiplexer", "predict_zero", "training_mean", "meaning"]
    for key in KEYS:
        assert table.loc[key, "multiplexer"] == pytest.approx(saved[key], rel=1e-3, abs=1e-12)
        assert table.loc[key, "training_mean"] == pytest.approx(saved["baselines"]["train_mean"][key], rel=1e-3,
                                                                abs=1e-12)
    assert table.loc["speedup", "multiplexer"] == pytest.approx(speed["speedup"], rel=1e-3)
    assert table.loc["exact_ism_ms_per_window", "multiplexer"] == pytest.approx(speed["ism_ms_per_window"], rel=1e-3)
    assert table.loc["speedup_vs_fast_ism", "multiplexer"] == pytest.approx(speed["speedup_vs_fast_ism"], rel=1e-3)
    assert table.loc["fast_exact_ism_ms_per_window", "multiplexer"] == \
        pytest.approx(speed["fast_ism_ms_per_window"], rel=1e-3)
    assert table["meaning"].notna().all()


def test_validation_split_when_test_is_empty(setup, tmp_path):
    d, splits, spec = setup
    empty = write_empty_split(tmp_path / "test.feather", 320, ["out_0", "out_1"])
    result, _ = run(tmp_path, splits, spec, test=empty, model=d / "model.pt")
    assert result["split"] == "validation" and result["windows"] == 2


def test_model_and_split_must_agree(setup, tmp_path):
    d, splits, spec = setup
    other = build_multiplexer("demo", 320, 3, dict(widths=[4], dilations=[1]))
    save_multiplexer(other, tmp_path / "m3.pt", ["a", "b", "c"], "logfold", "demo")
    with pytest.raises(InputError, match=r"test\.feather: n_outputs=2: the multiplexer .*m3\.pt was trained with 3"):
        run(tmp_path, splits, spec, model=tmp_path / "m3.pt")
    with pytest.raises(InputError, match="split shard not found"):
        run(tmp_path, splits, spec, test=tmp_path / "nope.feather", model=d / "model.pt")
