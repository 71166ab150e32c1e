"""GC-HMM track: the shared HMM sampler, the HMM checks, exact inference against hmmlearn, the user
TSV path, and the track's target rule end to end."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, deep_update, finished_run, run_workflow, track_section
from seqmux.errors import InputError
from seqmux.genome import GC_POOR, GC_RICH, hmm_sequence
from seqmux.hmm import sample_hmm, sample_states
from seqmux.tracks.gc_hmm import data as gd
from seqmux.tracks.gc_hmm import evaluate as ge
from seqmux.tracks.gc_hmm import inference as gi
from seqmux.tracks.gc_hmm import model as gm
from seqmux.tracks.gc_hmm import train as gt

EMISSION = {"H": {"A": 0.2, "C": 0.3, "G": 0.3, "T": 0.2}, "L": {"A": 0.3, "C": 0.2, "G": 0.2, "T": 0.3}}
TOY = {"states": ["H", "L"], "start": [0.5, 0.5], "transition": [[0.5, 0.5], [0.4, 0.6]], "emission": EMISSION}
STICKY = {"states": ["H", "L"], "start": [0.5, 0.5], "transition": [[0.95, 0.05], [0.05, 0.95]], "emission": EMISSION}
THREE = {"states": ["a", "b", "c"], "start": [0.2, 0.3, 0.5],
         "transition": [[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]],
         "emission": {"a": {"A": 0.7, "C": 0.1, "G": 0.1, "T": 0.1}, "b": {"A": 0.1, "C": 0.7, "G": 0.1, "T": 0.1},
                      "c": {"A": 0.25, "C": 0.25, "G": 0.25, "T": 0.25}}}


def _old_hmm_sequence(length, rng, stay=(0.999, 0.999), emissions=(GC_RICH, GC_POOR)):
    """The demo genome's sampler before it was shared (reference for byte identity)."""
    states = np.empty(length, dtype=np.int8)
    pos, state = 0, int(rng.integers(2))
    while pos < length:
        run = int(rng.geometric(1.0 - stay[state]))
        states[pos:pos + run] = state
        pos += run
        state = 1 - state
    cum = np.cumsum(np.stack(emissions), axis=1)
    u = rng.random(length)
    idx = (u[:, None] > cum[states]).sum(axis=1)
    return np.frombuffer(b"AGCT", dtype=np.uint8)[np.minimum(idx, 3)]


# --- the shared sampler ----------------------------------------------------------------------------

@pytest.mark.parametrize("stay", [(0.999, 0.999), (0.9, 0.6)])
def test_demo_genome_sampler_is_unchanged(stay):
    for seed in range(3):
        new = hmm_sequence(30000, np.random.default_rng(seed), stay=stay)
        old = _old_hmm_sequence(30000, np.random.default_rng(seed), stay=stay)
        assert new.tobytes() == old.tobytes()


def test_sampler_follows_transition_start_and_emission():
    hmm = gd.parse_hmm(THREE)
    states, symbols = sample_hmm(4000, 50, np.random.default_rng(0), hmm.transition, hmm.emission, hmm.start)
    assert states.shape == symbols.shape == (4000, 50)
    # start: 4000 draws, SE of a frequency <= 0.008; 0.04 is 5 SE
    assert np.abs(np.bincount(states[:, 0], minlength=3) / 4000 - hmm.start).max() < 0.04
    pairs = np.zeros((3, 3))
    np.add.at(pairs, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    freq = pairs / pairs.sum(1, keepdims=True)  # >= 40k transitions per row: SE <= 0.0025
    assert np.abs(freq - hmm.transition).max() < 0.015
    for s in range(3):
        e = np.bincount(symbols[states == s], minlength=4) / (states == s).sum()
        assert np.abs(e - hmm.emission[s]).max() < 0.015
    again = sample_hmm(4000, 50, np.random.default_rng(0), hmm.transition, hmm.emission, hmm.start)
    assert np.array_equal(again[0], states) and np.array_equal(again[1], symbols)


def test_sampler_handles_absorbing_and_never_staying_states():
    T = np.array([[0.0, 1.0], [0.0, 1.0]])  # state 0 leaves at once, state 1 never leaves
    s = sample_states(20, 30, np.random.default_rng(1), T, start=[1.0, 0.0])
    assert np.all(s[:, 0] == 0) and np.all(s[:, 1:] == 1)


# --- HMM checks ------------------------------------------------------------------------------------

def test_parse_hmm_orders_symbols_agct():
    hmm = gd.parse_hmm(TOY)
    assert gd.SYMBOLS == "AGCT"
    assert np.allclose(hmm.emission[0], [0.2, 0.3, 0.3, 0.2]) and np.allclose(hmm.emission[1], [0.3, 0.2, 0.2, 0.3])
    assert gd.parse_hmm(hmm.to_config()).emission.tolist() == hmm.emission.tolist()


@pytest.mark.parametrize("change, field, words", [
    ({"transition": [[0.5, 0.6], [0.4, 0.6]]}, "gc_hmm.presets.x.transition[H]", "sum to 1.1"),
    ({"start": [1.2, -0.2]}, "gc_hmm.presets.x.start", "negative"),
    ({"emission": {**EMISSION, "M": {"A": 0.25, "C": 0.25, "G": 0.25, "T": 0.25}}}, "gc_hmm.presets.x.emission",
     "state not in states"),
    ({"emission": {"H": {"A": 0.2, "C": 0.3, "G": 0.3, "T": 0.3}, "L": EMISSION["L"]}}, "gc_hmm.presets.x.emission.H",
     "sum to 1.1"),
    ({"states": ["H", "HL"]}, "gc_hmm.presets.x.states", "not one character"),
    ({"transition": [[1.0]]}, "gc_hmm.presets.x.transition", "2 rows"),
])
def test_bad_hmm_is_one_line_naming_the_field(change, field, words):
    with pytest.raises(InputError) as err:
        gd.parse_hmm({**TOY, **change}, "config", "gc_hmm.presets.x")
    assert err.value.field == field and words in str(err.value) and "\n" not in str(err.value)


def test_check_config_names():
    section = {"presets": {"toy": TOY}, "build": [], "data": "", "data_states": ["H", "L"]}
    gd.check_config(section)
    with pytest.raises(InputError, match="reserved"):
        gd.check_config({**section, "presets": {"data": TOY}})
    with pytest.raises(InputError, match="gc_hmm.build='nope'"):
        gd.check_config({**section, "build": ["nope"]})
    assert gd.built_presets({**section, "data": "x.tsv"}) == ["toy", "data"]


# --- exact inference -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ragged():
    """60 sticky sequences of 80 bp, the last 20 cut to 35 bp (padding exercised)."""
    hmm = gd.parse_hmm(STICKY)
    train = gd.simulate_sets(hmm, {"train": 60}, 80, np.random.default_rng(4))["train"]
    train.loc[40:, "dna"] = train["dna"][40:].str[:35]
    train.loc[40:, "hidden_state"] = train["hidden_state"][40:].str[:35]
    return hmm, *gd.encode_rows(train, hmm.states)


def test_forward_filter_loglik_equals_hmmlearn_score(ragged):
    for spec in (STICKY, TOY):
        hmm, tokens, _, lengths = gd.parse_hmm(spec), *ragged[1:]
        filtered, loglik = gi.forward_filter(tokens, lengths, hmm)
        assert lengths.min() == 35 and lengths.max() == 80
        # a sum of ~4,000 float64 logs: agreement to 1e-9 relative is far above rounding (~1e-13)
        assert loglik.sum() == pytest.approx(gi.hmmlearn_loglik(tokens, lengths, hmm), rel=1e-9)
        assert np.allclose(filtered.sum(-1), 1.0, atol=1e-12)


def test_smoothing_and_filtering_agree_with_hmmlearn_posterior(ragged):
    hmm, tokens, labels, lengths = ragged
    filtered, _ = gi.forward_filter(tokens, lengths, hmm)
    posterior, viterbi = gi.hmmlearn_decode(tokens, lengths, hmm)
    mask = labels >= 0
    assert np.abs(gi.backward_smooth(tokens, lengths, hmm, filtered)[mask] - posterior[mask]).max() < 1e-10
    last = lengths - 1  # at the last base, filtering sees everything
    rows = np.arange(len(tokens))
    assert np.abs(filtered[rows, last] - posterior[rows, last]).max() < 1e-10
    assert set(np.unique(viterbi[mask])) <= {0, 1}


def test_estimate_hmm_counts():
    frame = pd.DataFrame({"dna": ["ACGT", "AAGG"], "hidden_state": ["HHLL", "LHHH"]})
    hmm = gd.estimate_hmm(frame, ["H", "L"])
    assert hmm.start.tolist() == [0.5, 0.5]
    # pairs: HH HL LL | LH HH HH  -> from H: HH x3, HL x1; from L: LL x1, LH x1
    assert hmm.transition.tolist() == [[0.75, 0.25], [0.5, 0.5]]
    # H emits A, C (row 1) and A, G, G (row 2); L emits G, T, A (AGCT order)
    assert np.allclose(hmm.emission, [[2 / 5, 2 / 5, 1 / 5, 0], [1 / 3, 1 / 3, 0, 1 / 3]])


def test_random_match_and_calibration():
    labels = np.zeros((10, 100), dtype=np.int64)
    mean, p = ge.random_match(labels, 2, 0, 200, np.random.default_rng(0))
    assert p == 1.0 and abs(mean - 0.5) < 0.005  # 200 x 1000 draws: SE 0.0011
    assert ge.random_match(labels, 2, 1001, 200, np.random.default_rng(0))[1] == 0.0
    # constant 0.7 for state 0 that is right 100% of the time: |0.7 - 1| and |0.3 - 0| -> ECE 0.3
    prob = np.stack([np.full((10, 100), 0.7), np.full((10, 100), 0.3)], -1)
    assert ge.calibration(prob, labels)[3] == pytest.approx(0.3)


# --- sets, user TSV --------------------------------------------------------------------------------

def test_simulated_sets_are_disjoint_even_when_short():
    hmm = gd.parse_hmm(TOY)
    sets = gd.simulate_sets(hmm, {"train": 100, "validation": 20, "test": 30}, 6, np.random.default_rng(0))  # 4^6
    assert [len(f) for f in sets.values()] == [100, 20, 30]
    every = pd.concat(sets.values())
    assert every["dna"].nunique() == 150 and every["id"].tolist() == list(range(1, 151))
    with pytest.raises(InputError, match="too short"):
        gd.simulate_sets(hmm, {"train": 20, "test": 10}, 2, np.random.default_rng(0))  # only 16 strings of 2 bp


def _write_user_tsv(path, hmm, n, length, seed, repeat_first=0):
    train = gd.simulate_sets(hmm, {"train": n}, length, np.random.default_rng(seed))["train"]
    frame = pd.concat([train, train.iloc[:repeat_first]]).assign(note="x")
    frame[["note", "dna", "hidden_state"]].to_csv(path, sep="\t", index=False)
    return frame


def test_user_tsv_is_split_by_distinct_sequence(tmp_path):
    hmm = gd.parse_hmm(STICKY)
    _write_user_tsv(tmp_path / "user.tsv", hmm, 30, 40, 1, repeat_first=10)
    frame = gd.read_table(tmp_path / "user.tsv", ["H", "L"])
    assert len(frame) == 40 and list(frame.columns) == ["dna", "hidden_state"]
    sets, split = gd.split_table(frame, 0.3, 0.2, np.random.default_rng(0))
    assert sorted(pd.concat(sets.values())["id"]) == list(range(1, 41))  # the file's 1-based rows
    side = {}
    for part, rows in sets.items():
        assert rows["id"].map(lambda i: split[i - 1]).eq(part).all()
        for dna in rows["dna"]:
            assert side.setdefault(dna, part) == part  # a repeated sequence's rows on one side
    # whole sequences dealt until each share is met (12 and 8 of 40 rows): at most one repeated pair over
    assert 12 <= len(sets["test"]) <= 13 and 8 <= len(sets["validation"]) <= 9


@pytest.mark.parametrize("row, field, value", [
    ({"dna": "ACGT", "hidden_state": "HHL"}, "hidden_state (line 3)", "3 symbols"),
    ({"dna": "ACNT", "hidden_state": "HHLL"}, "dna (line 3)", "N"),
    ({"dna": "ACGT", "hidden_state": "HHXL"}, "hidden_state (line 3)", "X"),
])
def test_bad_user_tsv_is_one_line_naming_the_row(tmp_path, row, field, value):
    path = tmp_path / "bad.tsv"
    pd.DataFrame([{"dna": "acgt", "hidden_state": "HHLL"}, row]).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError) as err:
        gd.read_table(path, ["H", "L"])
    assert err.value.field == field and err.value.value == value and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_stages_repeat_byte_for_byte(tmp_path):
    sizes = {"embedding": 4, "hidden": 6, "layers": 1, "lr": 0.02, "schedule": "constant", "max_epochs": 2,
             "batch_size": 8, "chunk": 0, "record_every": 2, "patience": 0, "min_improvement": 0.0}
    digests = []
    for run in ("a", "b"):
        d = tmp_path / run
        sets = {part: d / f"{part}.tsv" for part in ("train", "validation", "test")}
        gd.simulate(sets, d / "hmm.json", d / "split.tsv", "sticky", STICKY, {"train": 24, "validation": 6, "test": 8},
                    60, seed=1)
        gt.train(sets["train"], sets["validation"], d / "hmm.json", d / "model.pt", d / "log.tsv", d / "loss.png",
                 "sticky", sizes, seed=1)
        ge.evaluate(sets, d / "hmm.json", d / "model.pt", d / "split.tsv", d / "metrics.json", d / "pred.tsv",
                    d / "cal.png", d / "acc.png", "sticky", seed=1, random_draws=20)
        digests.append({f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in
                        ("train.tsv", "validation.tsv", "test.tsv", "split.tsv", "hmm.json", "model.pt", "log.tsv",
                         "metrics.json", "pred.tsv")})
    assert digests[0] == digests[1]
    log = pd.read_csv(tmp_path / "a" / "log.tsv", sep="\t")
    assert log["model"].tolist() == ["gru"] * 3 + ["bigru"] * 3 and log["step"].tolist() == [2, 4, 6] * 2


# --- the target rule end to end --------------------------------------------------------------------

SMALL = {"gc_hmm": {"simulate": {"train": 40, "validation": 10, "test": 20, "length": 100}, "random_draws": 50,
                    "model": {"hidden": 8}, "train": {"max_epochs": 3, "batch_size": 8, "record_every": 5}}}


@pytest.fixture(scope="session")
def track_run(tmp_path_factory):
    """One run of `snakemake gc_hmm`: a default preset, a three-state one from an overlay, and a user
    TSV (drawn from the sticky HMM) as the preset `data` (`build` leaves out `toy`)."""
    workdir = tmp_path_factory.mktemp("gc_hmm_run")
    user = workdir / "user.tsv"
    _write_user_tsv(user, gd.parse_hmm(STICKY), 60, 100, 9)
    config = deep_update(TINY, deep_update(SMALL, {"gc_hmm": {"data": str(user), "presets": {"three": THREE},
                                                              "build": ["sticky", "three", "data"]}}))
    return finished_run(workdir, config, "gc_hmm")


def test_track_builds_every_preset(track_run):
    out = track_run / "results" / "gc_hmm"
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert summary["preset"].tolist() == ["sticky", "three", "data"]  # the order of `build`
    assert not (out / "toy").exists()
    for preset in summary["preset"]:
        m = json.loads((out / preset / "metrics.json").read_text())
        for key in ("gru_accuracy", "bigru_accuracy", "filtering_accuracy", "posterior_accuracy", "viterbi_accuracy",
                    "baseline_random_match_p", "gru_filtering_ratio", "bigru_posterior_ratio", "gru_validation_nll"):
            assert key in m and m[key] is not None
        assert 0 <= m["baseline_random_match_p"] <= 1 and m["test_bases"] == m["n_test"] * 100
        sets = [pd.read_csv(out / preset / f"{part}.tsv", sep="\t") for part in ("train", "validation", "test")]
        assert all(list(s.columns) == ["id", "dna", "hidden_state"] for s in sets)
        assert len(set().union(*(set(s["dna"]) for s in sets))) == sum(s["dna"].nunique() for s in sets)
        for name in ("calibration.png", "accuracy.png", "loss_curve.png"):
            assert (out / preset / name).stat().st_size > 1000
    sticky = json.loads((out / "sticky" / "metrics.json").read_text())
    # 2,000 test bases in 20 sequences: the posterior's SE ~0.02 around ~0.72
    assert 0.62 < sticky["posterior_accuracy"] < 0.82
    assert (sticky["n_train"], sticky["n_validation"], sticky["n_test"]) == (40, 10, 20)
    assert sticky["baseline_random_accuracy"] == pytest.approx(0.5, abs=0.01)  # 50 x 2,000 draws: SE 0.0016


def test_predictions_table(track_run):
    pred = pd.read_csv(track_run / "results/gc_hmm/three/test_predictions.tsv", sep="\t")
    assert list(pred.columns) == ["id", "dna", "hidden_state", "gru_state", "bigru_state", *[
        f"{n}_p_{s}" for n in ("gru", "bigru") for s in "abc"]]
    assert len(pred) == 20
    for _, row in pred.iterrows():
        assert len(row["gru_state"]) == len(row["bigru_state"]) == len(row["dna"]) == 100
        assert set(row["gru_state"]) <= set("abc")
        p = np.array([[float(v) for v in row[f"bigru_p_{s}"].split(",")] for s in "abc"])
        assert np.abs(p.sum(0) - 1).max() <= 1.6e-4  # three values rounded to 4 decimals (5e-5 each)
        chosen = np.array(["abc".index(c) for c in row["bigru_state"]])
        # the written state is the most probable one, up to the rounding of the written values
        assert np.all(p.max(0) - p[chosen, np.arange(100)] <= 1e-4)


def test_user_data_hmm_is_estimated(track_run):
    spec = json.loads((track_run / "results/gc_hmm/data/hmm.json").read_text())
    assert spec["source"].startswith("estimated by counting") and spec["symbols"] == "AGCT"
    # ~48 train rows x 99 transitions per state pair row ~2,400: SE of 0.95 ~0.0045
    assert abs(spec["transition"][0][0] - 0.95) < 0.03 and abs(spec["transition"][1][1] - 0.95) < 0.03
    assert abs(spec["emission"]["H"]["G"] - 0.3) < 0.04  # ~2,400 H bases: SE ~0.009


def test_bad_preset_stops_the_run_at_start(tmp_path):
    bad = {**TOY, "transition": [[0.5, 0.6], [0.4, 0.6]]}
    result = run_workflow(tmp_path, deep_update(TINY, {"gc_hmm": {"presets": {"bad": bad}}}), "gc_hmm")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "gc_hmm.presets.bad.transition[H]" in line]
    assert len(lines) == 1 and "sum to 1.1" in lines[0]
    assert not (tmp_path / "results").exists()


def test_bad_user_tsv_stops_in_one_line_without_outputs(tmp_path):
    user = tmp_path / "user.tsv"
    pd.DataFrame({"dna": ["ACGT", "ACGA", "AAAA"], "hidden_state": ["HHLL", "HHLQ", "LLLL"]}).to_csv(
        user, sep="\t", index=False)
    config = deep_update(TINY, deep_update(SMALL, {"gc_hmm": {"data": str(user), "build": ["data"]}}))
    result = run_workflow(tmp_path, config, "gc_hmm")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {user}: hidden_state (line 3)='Q': not a state of gc_hmm.data_states ['H', 'L']"]
    assert not list((tmp_path / "results" / "gc_hmm").glob("data/*"))


# --- a trained network ------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional, ceiling", [(False, "filtering"), (True, "posterior")])
def test_trained_networks_reach_the_hmm_ceilings(bidirectional, ceiling):
    """The default sizes and schedule on a tiny case (the sticky HMM, 150 training rows of 200 bp,
    50 for validation): the GRU reaches at least 0.95 of the filtering accuracy and the biGRU of the
    posterior's on 100 test rows (20,000 bases: the ratio's sampling SE is ~0.01), and stops on its
    own. A network that does not learn sits at chance (0.5 / ~0.8 = ~0.6)."""
    hmm = gd.parse_hmm(STICKY)
    sets = gd.simulate_sets(hmm, {"train": 150, "validation": 50, "test": 100}, 200, np.random.default_rng(0))
    sizes = {**track_section("gc_hmm")["model"], **track_section("gc_hmm")["train"]}
    pieces = gt.chunk_rows(*gd.encode_rows(sets["train"], hmm.states), int(sizes["chunk"]))
    validation = gd.encode_rows(sets["validation"], hmm.states)
    model, log, facts = gt.train_model(pieces, validation, 2, sizes, bidirectional, (1, "sticky"), "cpu", "test")
    assert facts["converged"] and facts["best_step"] == log["step"][log["validation_loss"].idxmin()]
    tokens, labels, lengths = gd.encode_rows(sets["test"], hmm.states)
    filtered, _ = gi.forward_filter(tokens, lengths, hmm)
    best = filtered if ceiling == "filtering" else gi.backward_smooth(tokens, lengths, hmm, filtered)
    net = ge.accuracy(gm.predict(model, tokens, lengths, "cpu").argmax(-1), labels)
    assert net >= 0.95 * ge.accuracy(best.argmax(-1), labels), (net, ge.accuracy(best.argmax(-1), labels))
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
