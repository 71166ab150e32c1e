"""The source's three torch models on the processed cells: full-batch Adam on binary cross-entropy.

- ``logistic``:   ``Linear(genes, 1)`` + ``Sigmoid``
- ``mlp``:        ``Linear(genes, hidden)`` + ``Sigmoid`` + ``Linear(hidden, 1)`` + ``Sigmoid``
- ``layer_list``: the same network as an ``nn.ModuleList`` run in a loop; built from the same seed
                  as ``mlp``, so it starts from the same weights and must train to the same numbers

Output: the probability of the first (positive) class, ``[cells, 1]``. The source one-hots the
label; with two classes the one-hot's second column is one minus the first, so one sigmoid output
on the positive class's indicator is the same model without a mirrored duplicate.

Objective: mean BCE over the training cells plus, when ``c > 0``, the L2 penalty
``sum(W**2) / (2 * c * n_train)`` over the weight matrices (not the biases). That is
scikit-learn's LogisticRegression objective (``sum of losses + ||w||^2 / (2C)``) divided by the
number of training cells, so the torch logistic model and the reference fit the same function.
The curves record the BCE alone (what a user compares), after each epoch's step (epoch 0: the
initial weights), on the training and the validation cells. Early stopping: each model keeps the
weights of its lowest validation BCE, and stops after ``patience`` epochs without a lower one (the
test cells are never read here).
"""

import logging

import anndata
import numpy as np
import pandas as pd
import torch
from torch import nn

from ... import checkpoint, seeding
from ...errors import InputError
from ...outputs import write_tsv
from ...plots import plot_curves
from ...runtime import choose_device, progress
from ..penalty import l2_penalty
from ..stopping import EarlyStopping
from . import STREAM_LOGISTIC, STREAM_MLP, TRACK

log = logging.getLogger(__name__)

MODELS = ("logistic", "mlp", "layer_list")
TITLES = {"logistic": "logistic (Linear + Sigmoid)", "mlp": "{hidden} sigmoid hidden units",
          "layer_list": "{hidden} hidden units as a layer list"}
HISTORY = ("train_loss", "validation_loss", "train_accuracy", "validation_accuracy")


class LayerList(nn.Module):
    """The hidden-layer network written as a list of layers run in a loop (``[cells, genes]`` ->
    ``[cells, 1]``)."""

    def __init__(self, n_genes, hidden):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n_genes, hidden), nn.Sigmoid(), nn.Linear(hidden, 1), nn.Sigmoid()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def build_model(name, n_genes, hidden):
    """An untrained model ``name`` (one of ``MODELS``), initialised from torch's global RNG."""
    if name == "logistic":
        return nn.Sequential(nn.Linear(n_genes, 1), nn.Sigmoid())
    if name == "mlp":
        return nn.Sequential(nn.Linear(n_genes, hidden), nn.Sigmoid(), nn.Linear(hidden, 1), nn.Sigmoid())
    if name == "layer_list":
        return LayerList(n_genes, hidden)
    raise InputError("model.pt", "scrna model", name, f"unknown model (known: {', '.join(MODELS)})")


def make_model(name, n_genes, hidden, seed):
    """Model ``name`` with its seeded initial weights (torch's global RNG state is left as it was)."""
    with seeding.torch_seeded(seed, TRACK, STREAM_LOGISTIC if name == "logistic" else STREAM_MLP):
        return build_model(name, n_genes, hidden)


def accuracy(prob, target):
    """Fraction of cells whose class (``prob > 0.5``: positive) is right; ``prob``, ``target`` ``[cells, 1]``."""
    return ((prob > 0.5) == (target > 0.5)).float().mean()


def bce(prob, target):
    """Mean binary cross-entropy (torch's BCELoss: each log clamped at -100)."""
    return nn.functional.binary_cross_entropy(prob, target)


def cell_tensors(cells, device="cpu"):
    """``{split: (x [cells, genes] float32, y [cells, 1] float32)}`` of the training and validation
    cells of a processed AnnData."""
    split = cells.obs["split"].astype(str).to_numpy()
    x = np.asarray(cells.X, dtype=np.float32)
    y = cells.obs["target"].to_numpy(np.float32)[:, None]
    return {part: (torch.from_numpy(np.ascontiguousarray(x[split == part])).to(device),
                   torch.from_numpy(np.ascontiguousarray(y[split == part])).to(device))
            for part in ("train", "validation")}


def train_model(model, data, lr, epochs, c, desc="train", patience=0, min_improvement=0.0):
    """Full-batch Adam on mean BCE (+ the L2 penalty, see the module docstring) for at most
    ``epochs``, keeping the weights of the lowest validation BCE; stops after ``patience`` epochs
    without one lower by more than the fraction ``min_improvement`` (0: never;
    ``seqmux.tracks.stopping``).

    ``data``: ``{"train": (x, y), "validation": (x, y)}`` on the model's device. Returns
    ``(history, facts)``: ``{key: [epochs run + 1] float64}`` for ``HISTORY`` keys, measured after
    each epoch's step (index 0: the initial weights), and ``{"best_epoch", "epochs_done",
    "converged"}`` (False when the best epoch is the last: still improving). The model ends with
    its best weights.
    """
    (x_train, y_train), (x_val, y_val) = data["train"], data["validation"]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history = torch.zeros(epochs + 1, len(HISTORY), dtype=torch.float64, device=x_train.device)
    stopper = EarlyStopping(patience, min_improvement)

    def record(epoch):
        with torch.no_grad():
            p_train, p_val = model(x_train), model(x_val)
            history[epoch] = torch.stack([bce(p_train, y_train), bce(p_val, y_val), accuracy(p_train, y_train),
                                          accuracy(p_val, y_val)]).double()
        return stopper.update(epoch, float(history[epoch, 1]), model)

    record(0)
    bar = progress(total=epochs, desc=desc)
    done = epochs
    for epoch in range(1, epochs + 1):
        optimiser.zero_grad(set_to_none=True)
        loss = bce(model(x_train), y_train) + l2_penalty(model, c, len(x_train))
        loss.backward()
        optimiser.step()
        bar.update()
        if record(epoch):
            done = epoch
            break
    bar.close()
    stopper.restore(model)
    values = history[:done + 1].cpu().numpy()
    return {key: values[:, i] for i, key in enumerate(HISTORY)}, stopper.facts("epoch")


def curves_table(histories):
    """Long table: ``epoch``, ``model`` and the ``HISTORY`` columns, one row per model and epoch."""
    frames = []
    for name, history in histories.items():
        frame = pd.DataFrame({"epoch": np.arange(len(history["train_loss"])), "model": name})
        for key in HISTORY:
            frame[key] = history[key]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def plot_training(histories, hidden, out_loss, out_accuracy):
    """Loss and accuracy curves, one panel per model, train and validation lines (the models may
    stop at different epochs: the shorter curves end early)."""
    longest = max(len(h["train_loss"]) for h in histories.values())
    epochs = np.arange(longest)

    def padded(values):
        return np.concatenate([values, np.full(longest - len(values), np.nan)])

    for what, out, label in (("loss", out_loss, "binary cross-entropy"), ("accuracy", out_accuracy, "accuracy")):
        panels = {TITLES[name].format(hidden=hidden): {"train": padded(h[f"train_{what}"]),
                                                       "validation": padded(h[f"validation_{what}"])}
                  for name, h in histories.items()}
        plot_curves(epochs, {}, out, "epoch", label, panels=panels, logy=what == "loss")


def save_models(models, genes, classes, hidden, out, training=None):
    """The trained models (``seqmux.checkpoint``, kind ``scrna``: ``{name: state_dict}``) with the
    gene and class names, the hidden size and each model's training facts."""
    checkpoint.save(out, TRACK, dict(models), genes=[str(g) for g in genes], classes=[str(c) for c in classes],
                    hidden=int(hidden), training=dict(training or {}))


def load_models(path):
    """``(models, meta)``: the models of :func:`save_models` rebuilt in eval mode on the CPU; an
    InputError naming the file when it is not one."""
    state, meta = checkpoint.load(path, TRACK, field="scrna model")
    models = {name: checkpoint.load_into(build_model(name, len(meta["genes"]), meta["hidden"]), weights, path, TRACK,
                                         "scrna model")
              for name, weights in state.items()}
    return models, meta


def train_scrna(cells_h5ad, out_models, out_curves, out_loss_plot, out_accuracy_plot, hidden, lr, epochs, c,
                seed, device="cpu", patience=0, min_improvement=0.0):
    """Stage ``train_scrna``: the three models (early stopping on the validation cells), their
    curves (``training_log.tsv`` and plots) and weights (``model.pt``)."""
    device = choose_device(device, "config", "scrna.device")
    cells = anndata.read_h5ad(cells_h5ad)
    data = cell_tensors(cells, device)
    n_genes = cells.n_vars
    log.info("training on %d cells, validating on %d, %d genes; Adam lr %g, at most %d full-batch epochs, patience "
             "%d, C %g, device %s", len(data["train"][0]), len(data["validation"][0]), n_genes, lr, epochs, patience,
             c, device)
    models, histories, facts = {}, {}, {}
    for name in MODELS:
        model = make_model(name, n_genes, hidden, seed).to(device)
        histories[name], facts[name] = train_model(model, data, lr, epochs, c, desc=f"train {name}", patience=patience,
                                                     min_improvement=min_improvement)
        models[name] = model.eval()
        h, f = histories[name], facts[name]
        best = f["best_epoch"]
        log.info("%s: best validation BCE %.4f (accuracy %.4f) at epoch %d of %d; train BCE there %.4f", name,
                 h["validation_loss"][best], h["validation_accuracy"][best], best, f["epochs_done"],
                 h["train_loss"][best])
        if not f["converged"]:
            log.warning("%s had not converged: its validation BCE was still falling at the last epoch (%d); raise "
                        "scrna.train.max_epochs", name, f["epochs_done"])
    classes = list(cells.obs["label"].cat.categories)
    write_tsv(curves_table(histories), out_curves)
    plot_training(histories, hidden, out_loss_plot, out_accuracy_plot)
    save_models(models, cells.var_names, classes, hidden, out_models, facts)
