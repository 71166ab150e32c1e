"""The track contract (docs/tracks.md), checked for every track: the shared checkpoint, seeding,
splitting and early-stopping helpers, the layout of the code, config and rules, and each track's
target rule on its tiny config against the common output names and metrics keys."""

import ast
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, TINY, deep_update, finished_run
from seqmux import checkpoint, seeding
from seqmux.errors import InputError
from seqmux.tracks.splitting import deal_components, linked_components
from seqmux.tracks.stopping import EarlyStopping

TRACKS = ("circuitsnp", "scrna", "gc_hmm", "sgrna")
OUTPUTS = ("metrics.json", "split.tsv", "training_log.tsv", "loss_curve.png", "test_predictions.tsv", "model.pt")
METRICS = ("n_train", "n_validation", "n_test", "selected_model", "converged")
# each track on a config small enough for a test
TINY_TRACK = {
    "circuitsnp": {"windows": {"count": {"train": 1500, "validation": 500, "test": 800}}, "motifs": 24,
                   "train": {"lr": 0.003, "max_epochs": 1500}, "simulate_vcf": {"destroying": 12, "background": 12}},
    "scrna": {},
    "sgrna": {"simulate": {"guides": 600}, "train": {"steps": 5000, "record_every": 50, "patience": 20}},
    "gc_hmm": {"build": ["sticky"], "simulate": {"train": 40, "validation": 10, "test": 20, "length": 100},
               "random_draws": 50, "model": {"hidden": 8},
               "train": {"max_epochs": 3, "batch_size": 8, "record_every": 5}},
}
# where a track's contract outputs are: gc_hmm has one folder per HMM preset
FOLDER = {"gc_hmm": "gc_hmm/sticky"}
SCHEMA = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())["properties"]


# --- the shared helpers ----------------------------------------------------------------------------

def test_checkpoint_round_trip_and_one_line_errors(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "model.pt"
    checkpoint.save(path, "sgrna", model, sizes={"hidden": 3}, names=["a", "b"])
    blob = torch.load(path, weights_only=True)  # plain tensors and values: nothing pickled runs
    assert blob["format"] == "seqmux" and blob["kind"] == "sgrna"
    state, meta = checkpoint.load(path, "sgrna")
    assert meta == {"sizes": {"hidden": 3}, "names": ["a", "b"]}
    again = checkpoint.load_into(torch.nn.Linear(3, 2), state, path, "sgrna")
    assert torch.equal(again.weight, model.weight) and not again.training
    checkpoint.save(tmp_path / "same.pt", "sgrna", model, sizes={"hidden": 3}, names=["a", "b"])
    assert (tmp_path / "same.pt").read_bytes() == path.read_bytes()
    (tmp_path / "text.pt").write_text("not a model\n")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "bare.pt")
    cases = [(tmp_path / "absent.pt", "sgrna", "model file not found"),
             (tmp_path / "text.pt", "sgrna", "not a PyTorch model file"),
             (tmp_path / "bare.pt", "sgrna", "not a seqmux sgrna model file"),
             (path, "scrna", "holds a 'sgrna' model, not a 'scrna' model")]
    for file, kind, problem in cases:
        with pytest.raises(InputError) as err:
            checkpoint.load(file, kind, field="scrna model")
        assert str(err.value).startswith(f"{file}: scrna model=") and problem in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="weights do not fit the model"):
        checkpoint.load_into(torch.nn.Linear(4, 2), state, path, "sgrna")


def test_seeding_streams_are_named_stable_and_independent():
    a = seeding.rng(1, "sgrna", "split").random(4)
    assert np.array_equal(a, seeding.rng(1, "sgrna", "split").random(4))
    for other in (seeding.rng(2, "sgrna", "split"), seeding.rng(1, "scrna", "split"), seeding.rng(1, "sgrna", "init")):
        assert not np.array_equal(a, other.random(4))
    assert seeding.entropy(7, "sgrna", "split") == [7, 1209993569, 2985662993]  # CRC-32: the same on every machine
    g1, g2 = seeding.torch_generator(3, "x", "y"), seeding.torch_generator(3, "x", "y")
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    before = torch.random.get_rng_state()
    with seeding.torch_seeded(3, "x", "y"):
        inside = torch.rand(2)
    with seeding.torch_seeded(3, "x", "y"):
        assert torch.equal(torch.rand(2), inside)
    assert torch.equal(torch.random.get_rng_state(), before)
    with pytest.raises(ValueError):
        seeding.rng(1, "", "split")


def test_linked_items_are_dealt_whole():
    seqs = ["a", "b", "a", "c", "d", "e", "d", "f"]
    genes = ["g1", "g2", "g3", "g3", "g4", "g5", "g6", "g5"]
    comp = linked_components(seqs, genes)
    # a-a links rows 0, 2; g3 links 2, 3; d-d links 4, 6; g5 links 5, 7
    assert comp.tolist() == [0, 1, 0, 0, 2, 3, 2, 3]
    split = deal_components(comp, 0.25, 0.25, np.random.default_rng(0))
    for c in np.unique(comp):
        assert len(set(split[comp == c])) == 1
    assert linked_components([None, None, 1, 1]).tolist() == [0, 1, 2, 2]


def test_early_stopping_keeps_the_best_and_says_when_it_had_not_converged():
    model = torch.nn.Linear(1, 1)
    stop = EarlyStopping(patience=2)
    for step, loss in enumerate([3.0, 2.0, 2.5, 2.4]):
        with torch.no_grad():
            model.weight.fill_(step)
        done = stop.update(step, loss, model)
    assert done and stop.best_step == 1 and stop.converged
    assert float(stop.restore(model).weight.detach()) == 1.0
    falling = EarlyStopping(patience=5)
    for step, loss in enumerate([3.0, 2.0, 1.0]):
        falling.update(step, loss, model)
    assert not falling.converged and falling.facts("epoch") == {"best_epoch": 2, "epochs_done": 2, "converged": False}
    tiny = EarlyStopping(patience=2, min_improvement=0.01)  # improvements below 1 % do not reset patience
    assert [tiny.update(s, v, model) for s, v in enumerate([1.0, 0.995, 0.994])] == [False, False, True]
    assert tiny.best_step == 2 and tiny.converged


# --- code, config and rules ------------------------------------------------------------------------

def track_sources(track):
    base = REPO / "seqmux" / "tracks"
    return sorted((base / track).glob("*.py")) if (base / track).is_dir() else [base / f"{track}.py"]


@pytest.mark.parametrize("track", TRACKS)
def test_code_uses_the_shared_helpers_and_only_the_spine(track):
    for path in track_sources(track):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not re.search(r"(^|\.)(predict|cli|score)$", module), (path, module)
                other = [t for t in TRACKS if t != track and re.search(rf"(^|\.){t}(\.|$)", module)]
                assert not other, (path, module)
        assert "torch.save(" not in text and "torch.load(" not in text, path  # seqmux.checkpoint only
        assert not re.search(r"default_rng\(\[", text), path  # seqmux.seeding only
        assert not re.search(r"manual_seed\(", text), path
        assert "ValueError(" not in text, path  # InputError where the input enters
        assert not re.search(r"\b(issue|session) \d+", text, re.IGNORECASE), path


@pytest.mark.parametrize("track", TRACKS)
def test_config_section_has_the_common_sub_sections(track):
    section = SCHEMA[track]["properties"]
    assert "device" in section
    train = section["train"]["properties"] if "train" in section else section["model"]["properties"]
    assert "lr" in train
    assert "patience" in train and ("max_epochs" in train or "steps" in train)
    for key in ("lr", "patience"):
        assert "default" in train[key] and train[key].get("description"), (track, key)
    if track in ("scrna", "sgrna"):
        assert set(section["split"]["properties"]) == {"test_fraction", "validation_fraction", "group_column"}
    rules = (REPO / "rules" / f"{track}.smk").read_text()
    assert re.search(rf"^rule {track}:$", rules, re.M) and "check_at_start(" in rules
    assert not re.search(r"\b(issue|session) \d+", rules, re.IGNORECASE)
    config = (REPO / "config/config.yaml").read_text() + (REPO / "schemas/config.schema.yaml").read_text()
    assert f"{track}: BEGIN" not in config


# --- the target rules against the contract ----------------------------------------------------------

@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory):
    """The four tracks on their tiny configs in one working directory, built by two workflow runs of
    two tracks each (each run within the runner's time limit on a shared machine)."""
    workdir = tmp_path_factory.mktemp("contract")
    config = deep_update(TINY, {t: TINY_TRACK[t] for t in TRACKS})
    finished_run(workdir, config, *TRACKS[:2])
    return finished_run(workdir, config, *TRACKS[2:])


@pytest.mark.parametrize("track", TRACKS)
def test_outputs_and_metrics_follow_the_contract(contract_runs, track):
    out = contract_runs / "results" / FOLDER.get(track, track)
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())  # flat
    for key in METRICS:
        assert key in metrics, key
    assert isinstance(metrics["converged"], bool)
    assert any(k.startswith("baseline_") for k in metrics)
    test_metric = {"sgrna": "test_mse", "scrna": "test_accuracy", "circuitsnp": "auroc", "gc_hmm": "accuracy"}[track]
    assert f"{metrics['selected_model']}_{test_metric}" in metrics
    split = pd.read_csv(out / "split.tsv", sep="\t")
    assert list(split.columns[:2]) == ["id", "split"] and split["id"].is_unique
    counts = split["split"].value_counts()
    assert (counts["train"], counts["validation"], counts["test"]) == (
        metrics["n_train"], metrics["n_validation"], metrics["n_test"])
    log = pd.read_csv(out / "training_log.tsv", sep="\t")
    assert {"train_loss", "validation_loss"} <= set(log.columns) and ({"epoch", "step"} & set(log.columns))
    predictions = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    assert predictions.columns[0] == "id" and len(predictions) == metrics["n_test"]
    assert set(predictions["id"].astype(str)) <= set(split["id"].astype(str)) or track == "circuitsnp"
    kind = torch.load(out / "model.pt", weights_only=True)["kind"]
    assert kind == track


# --- each track once with the source's settings (docs/tracks.md, the departures tables) ----------------

def test_source_settings_run():
    """Every track's training with the values that restore its source document's behaviour runs its
    whole budget (no early stop), on a small case each."""
    from seqmux.tracks.circuitsnp import train as ct
    from seqmux.tracks.gc_hmm import data as gd
    from seqmux.tracks.gc_hmm import train as gt
    from seqmux.tracks.sgrna import data as sd
    from seqmux.tracks.sgrna import train as st
    from seqmux.tracks.scrna import train as sc

    rng = np.random.default_rng(0)
    # circuitSNP: Adam 1e-4, 5,000 full-batch epochs, patience 0
    x = (rng.random((300, 8)) < 0.3).astype(np.float32)
    y = (x[:, 0] + x[:, 1] + rng.random(300) > 1.2).astype(np.int64)
    _, history, facts = ct.fit_network(x[:200], y[:200], x[200:], y[200:], [5, 5], 1e-4, 5000, 1, patience=0)
    assert facts["epochs_done"] == len(history) == 5000
    # single-cell: Adam 1e-4, 10 epochs, no penalty
    xs = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    ys = (xs[:, :1] > 0).float()
    _, facts = sc.train_model(sc.make_model("mlp", 6, 50, 1), {"train": (xs[:60], ys[:60]),
                                                              "validation": (xs[60:], ys[60:])},
                              lr=1e-4, epochs=10, c=0.0, patience=0)
    assert facts["epochs_done"] == 10
    # GC-HMM: hidden 10, batch 1, 5 epochs, constant rate, 50 whole training rows, patience 0
    hmm = gd.parse_hmm({"states": ["H", "L"], "start": [0.5, 0.5], "transition": [[0.5, 0.5], [0.4, 0.6]],
                       "emission": {"H": {"A": 0.2, "C": 0.3, "G": 0.3, "T": 0.2},
                                    "L": {"A": 0.3, "C": 0.2, "G": 0.2, "T": 0.3}}})
    sets = gd.simulate_sets(hmm, {"train": 50, "validation": 5}, 60, rng)
    sizes = {"embedding": 4, "hidden": 10, "layers": 1, "lr": 0.02, "schedule": "constant", "max_epochs": 5,
             "batch_size": 1, "chunk": 0, "record_every": 10, "patience": 0, "min_improvement": 0.0}
    _, _, facts = gt.train_model(gd.encode_rows(sets["train"], hmm.states), gd.encode_rows(sets["validation"],
                                 hmm.states), 2, sizes, False, (1, "toy"), "cpu", "source")
    assert facts["steps_done"] == 5 * 50
    # sgRNA: 20,000 steps of one guide, the outcome at its own scale, patience 0
    seqs = ["".join(rng.choice(list("ACGT"), 12)) for _ in range(300)]
    onehot = sd.encode_onehot(seqs).astype(np.float32)
    out = rng.normal(0.5, 0.15, 300)
    _, _, curve, facts = st.train_network(onehot[:240], out[:240], onehot[240:], out[240:], 20000, 0.05, 1, 100,
                                         float(np.std(out[:240])), 1, patience=0)
    assert facts["steps_done"] == curve[-1][0] == 20000
