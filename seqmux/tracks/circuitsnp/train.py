"""circuitSNP track, training: full-batch Adam with early stopping on the validation BCE.
"""

import logging

import numpy as np
import pandas as pd

from ... import seeding
from ...errors import InputError
from ...outputs import write_json, write_tsv
from ..penalty import l2_penalty
from ..stopping import EarlyStopping
from .data import TRACK, read_feather_split
from .model import bce, build_network, fit_logistic, save_network

log = logging.getLogger(__name__)


def fit_network(x_train, y_train, x_val, y_val, hidden, lr, epochs, seed, device="cpu", patience=0,
                min_improvement=0.0, bias_init="default", c=0.0):
    """Full-batch Adam on BCE of both softmax columns against (Y, Y_alt) plus, when ``c > 0``,
    scikit-learn's L2 penalty ``sum(W**2) / (2 c n_train)`` on the weight matrices
    (:mod:`seqmux.tracks.penalty`; both columns' BCE is the per-window log loss, so with ``c`` equal
    to the logistic regression's C the two share one objective) for at most ``epochs``; the
    weights of the epoch with the lowest validation loss are kept, and training stops after
    ``patience`` epochs without a loss lower by more than the fraction ``min_improvement``
    (``seqmux.tracks.stopping``; 0: never). Returns ``(net on the CPU, history, facts)``;
    ``history`` is a DataFrame of epoch (1-based), train_loss (the BCE, before that epoch's step)
    and validation_loss (after it); ``facts``: ``best_epoch``, ``epochs_done``, ``converged``,
    ``best_validation_loss``."""
    import torch

    from ...runtime import progress

    gen = seeding.torch_generator(seed, TRACK, "init")
    net = build_network(x_train.shape[1], hidden, gen, bias_init).to(device)

    def tensors(x, y):
        y = np.asarray(y, dtype=np.float32)
        return (torch.as_tensor(np.asarray(x, dtype=np.float32), device=device),
                torch.as_tensor(np.stack([y, 1 - y], axis=1), device=device))

    xt, yt = tensors(x_train, y_train)
    xv, yv = tensors(x_val, y_val)
    loss_fn = torch.nn.BCELoss()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    train_loss, val_loss = [], []
    stopper = EarlyStopping(patience, min_improvement)
    for epoch in progress(range(1, epochs + 1), epochs, "train circuitsnp network"):
        opt.zero_grad()
        loss = loss_fn(net(xt), yt)
        (loss + l2_penalty(net, c, len(xt))).backward()
        opt.step()
        with torch.no_grad():
            v = loss_fn(net(xv), yv).item()
        train_loss.append(loss.item())
        val_loss.append(v)
        stop = stopper.update(epoch, v, net)
        if epoch % max(1, epochs // 10) == 0 or stop:
            log.info("epoch %d: train BCE %.5f, validation BCE %.5f (best %.5f at epoch %d)", epoch,
                     train_loss[-1], v, stopper.best_loss, stopper.best_step)
        if stop:
            break
    stopper.restore(net)
    history = pd.DataFrame({"epoch": np.arange(1, len(train_loss) + 1), "train_loss": train_loss,
                            "validation_loss": val_loss})
    facts = dict(stopper.facts("epoch"), best_validation_loss=stopper.best_loss)
    return net.cpu(), history, facts


def plot_losses(history, best_epoch, noskill, out):
    """Training and validation BCE per epoch, the no-skill validation BCE (the training open
    fraction for every window) as a flat line, the kept epoch marked."""
    from ...plots import plot_curves

    series = {"train": history["train_loss"], "validation": history["validation_loss"],
              f"no skill, validation ({noskill:.3f})": np.full(len(history), noskill)}
    plot_curves(history["epoch"], series, out, "epoch", "BCE", title="circuitSNP network (full batch)",
                best=(best_epoch, f"kept: epoch {best_epoch}"))


def train(train_path, val_path, out_model, out_logistic, out_history, out_plot, hidden, lr, epochs, logistic_c,
          seed, device="cpu", patience=0, min_improvement=0.0, bias_init="default", c=(0.0,)):
    """Step: train the network (early stopping on the validation split) once per L2 strength of
    ``c`` (a list; 0: no penalty), keep the one of the lowest validation BCE (ties: the first), and
    fit the logistic regression on the training split."""
    from ...runtime import choose_device

    dev = choose_device(device, "config", "circuitsnp.device")
    x, y, names = read_feather_split(train_path, "train split")
    xv, yv, names_v = read_feather_split(val_path, "validation split")
    if names_v != names:
        raise InputError(val_path, "feature columns", len(names_v), f"differ from the training split's ({len(names)})")
    grid = [float(v) for v in (c if isinstance(c, (list, tuple)) else [c])]
    log.info("training on %d windows x %d features (%d open), validating on %d, at most %d epochs (patience %d), "
             "lr %g, L2 C %s, device %s", len(y), len(names), int(y.sum()), len(yv), epochs, patience, lr, grid, dev)
    net, history, facts = None, None, None
    for value in grid:
        fit = fit_network(x, y, xv, yv, hidden, lr, epochs, seed, dev, patience, min_improvement, bias_init, value)
        log.info("L2 C %g: validation BCE %.5f (kept epoch %d of %d)", value, fit[2]["best_validation_loss"],
                 fit[2]["best_epoch"], fit[2]["epochs_done"])
        if facts is None or fit[2]["best_validation_loss"] < facts["best_validation_loss"]:
            net, history, facts = fit[0], fit[1], dict(fit[2], c=value)
    if len(grid) > 1:
        log.info("L2 C %g chosen on the validation BCE", facts["c"])
    best_epoch = facts["best_epoch"]
    base_bce = bce(yv, np.full(len(yv), y.mean()))
    log.info("kept epoch %d of %d: validation BCE %.5f (no-skill %.5f)", best_epoch, facts["epochs_done"],
             facts["best_validation_loss"], base_bce)
    if not facts["converged"]:
        log.warning("not converged: the validation BCE was still falling at the last epoch (%d); raise "
                    "circuitsnp.train.max_epochs or lr", facts["epochs_done"])
    save_network(net, out_model, names, hidden, facts)
    logistic = fit_logistic(x, y, logistic_c)
    logistic["features"] = names
    write_json(logistic, out_logistic)
    write_tsv(history, out_history)
    plot_losses(history, best_epoch, base_bce, out_plot)
    return history
