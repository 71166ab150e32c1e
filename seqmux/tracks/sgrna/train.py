"""sgRNA track, training: plain SGD with step ``lr / sqrt(t + 1)``, one random guide per step
(mini-batches as an option), early stopping on the validation MSE (``seqmux.tracks.stopping``).
"""

import logging
import math

import numpy as np
import pandas as pd
import torch

from ... import seeding
from ...errors import InputError
from ...outputs import write_tsv
from ...plots import plot_curves
from ...runtime import choose_device, progress
from ..stopping import EarlyStopping
from .data import TRACK, load_encoded, split_arrays
from .model import PositionNetwork, save_model

log = logging.getLogger(__name__)


@torch.no_grad()
def sgd_step(model, x, y, lr):
    """One plain SGD step on the mean squared error of the batch ``x [B, 4, P]``, ``y [B]``, with
    the gradients written out (the same as autograd's, tested; 2-3x faster for one guide a step).

    With ``z = w . x``, ``s = relu(z)``, ``r = b + beta . s - y`` and ``g = 2 r / B``:
    ``dL/dbeta = g . s``, ``dL/db = sum g``, ``dL/dw_ib = sum_n g_n beta_i 1(z_ni > 0) x_nbi``.
    Returns the batch's loss before the step (a 0-d tensor)."""
    z = (x * model.weight.T).sum(1)
    active = z > 0
    s = z * active
    r = s @ model.beta + model.intercept - y
    g = r * (2.0 / len(y))
    grad_w = (((g[:, None] * active) * model.beta)[:, None, :] * x).sum(0).T
    model.beta.sub_(g @ s, alpha=lr)
    model.intercept.sub_(g.sum(), alpha=lr)
    model.weight.sub_(grad_w, alpha=lr)
    return (r * r).mean()


@torch.no_grad()
def mse(model, x, y):
    """Mean squared error of the model on all of ``x [N, 4, P]``, ``y [N]`` in one pass (a float)."""
    return float(((model(x) - y) ** 2).mean())


@torch.no_grad()
def mse_position_major(model, xp, y):
    """``mse`` for the one-hot in position-major layout ``xp [P, N, 4]`` (one batched matrix
    product, ~3x faster than ``model(x)``; the training curve's records use it)."""
    z = torch.bmm(xp, model.weight.unsqueeze(2)).squeeze(2)  # [P, N]
    return float(((model.beta @ torch.relu(z) + model.intercept - y) ** 2).mean())


def train_network(x_train, y_train, x_val, y_val, steps, eps, batch_size, record_every, target_sd, seed,
                  device="cpu", patience=0, min_improvement=0.0):
    """Train ``PositionNetwork`` with SGD, step ``eps / sqrt(t + 1)`` at step ``t`` (0-based),
    ``batch_size`` guides a step drawn with replacement (1: the source's one guide a step).

    The network trains on the outcome standardised to standard deviation ``target_sd`` with the
    training mean and SD (its predictions are mapped back); every weight and head coefficient
    starts at ``sqrt(target_sd / sqrt(P))`` (the size a position's share of the outcome's spread
    needs, balanced between the two factors), the intercept so that the first prediction is the
    training mean. Train and validation MSE (outcome units) are recorded at step 0, every
    ``record_every`` steps and at the end, each over all guides in one pass. Early stopping: the
    weights of the record with the lowest validation MSE are kept, and training stops after
    ``patience`` records without an improvement by more than the fraction ``min_improvement`` of
    the best so far (0: runs all ``steps``). A non-finite loss stops training with an InputError
    naming ``sgrna.train.lr``.

    Returns ``(model on the CPU with the best weights, {"mean", "sd", "target_sd"} of the scaling,
    curve rows [(step, train_mse, validation_mse)], facts {"best_step", "steps_done", "converged"})``;
    ``converged``: patience ran out, or the best record is not the last one (False: still improving).
    """
    device = torch.device(device)
    mean, sd = float(np.mean(y_train)), float(np.std(y_train))
    sd = sd if sd > 0 else 1.0
    scale = target_sd / sd
    tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    xtr, xva = tensor(x_train), tensor(x_val)
    ytr, yva = tensor((np.asarray(y_train) - mean) * scale), tensor((np.asarray(y_val) - mean) * scale)
    n_pos = xtr.shape[2]
    model = PositionNetwork(n_pos, init=math.sqrt(target_sd / math.sqrt(n_pos))).to(device)
    draws = torch.randint(len(ytr), (steps, batch_size), generator=seeding.torch_generator(seed, TRACK, "train"))
    draws = draws[:, 0].tolist() if batch_size == 1 else draws.to(device)  # one guide: a slice, no copy
    rates = (eps / np.sqrt(np.arange(steps) + 1.0)).tolist()
    to_outcome = 1.0 / scale ** 2

    ptr, pva = (x.permute(2, 0, 1).contiguous() for x in (xtr, xva))
    stopper = EarlyStopping(patience, min_improvement)

    def record(step):
        val = mse_position_major(model, pva, yva) * to_outcome
        curve.append((step, mse_position_major(model, ptr, ytr) * to_outcome, val))
        return stopper.update(step, val, model)

    curve = []
    record(0)
    for t in progress(range(steps), steps, "train sgrna"):
        idx = slice(draws[t], draws[t] + 1) if batch_size == 1 else draws[t]
        loss = sgd_step(model, xtr[idx], ytr[idx], rates[t])
        if (t + 1) % record_every == 0 or t + 1 == steps:
            if not math.isfinite(float(loss)):
                raise InputError("config", "sgrna.train.lr", eps, f"SGD diverged (non-finite loss by step {t + 1}): "
                                 "use a smaller step (or a smaller sgrna.train.target_sd)")
            if record(t + 1):
                break
    stopper.restore(model)
    return model.cpu(), {"mean": mean, "sd": sd, "target_sd": target_sd}, curve, stopper.facts("step")


def train(encoded_path, model_out, log_out, curve_plot, steps, eps, batch_size, record_every, target_sd, seed,
          device="cpu", patience=0, min_improvement=0.0):
    """Stage: train the network on the training guides of ``encoded.npz``, early stopping on the
    validation guides; write ``model.pt``, ``training_log.tsv`` (``step``, ``train_loss``,
    ``validation_loss``: MSE in outcome units) and ``loss_curve.png``."""
    dev = choose_device(device, "config", "sgrna.device")
    data = load_encoded(encoded_path)
    masks = split_arrays(data)
    tr, va = masks["train"], masks["validation"]
    x, y = data["onehot"], data["outcome"]
    log.info("training on %d guides x %d positions (validation: %d), at most %d steps of %d guide(s), step %.3g / "
             "sqrt(t + 1), patience %d records, outcome scaled to SD %.3g, on %s", int(tr.sum()), x.shape[2],
             int(va.sum()), steps, batch_size, eps, patience, target_sd, dev)
    model, scaling, curve, facts = train_network(x[tr], y[tr], x[va], y[va], steps, eps, batch_size, record_every,
                                                 target_sd, seed, dev, patience, min_improvement)
    save_model(model, scaling, data["positions"], model_out, facts)
    frame = pd.DataFrame(curve, columns=["step", "train_loss", "validation_loss"])
    write_tsv(frame, log_out)
    baseline = float(np.mean((y[va] - y[tr].mean()) ** 2))
    plot_curves(frame["step"], {"train": frame["train_loss"], "validation": frame["validation_loss"],
                                "validation, training mean": np.full(len(frame), baseline)},
                curve_plot, "SGD step", "mean squared error", title="sgRNA network", logy=True)
    log.info("best validation MSE %.5f at step %d of %d (training mean: %.5f)", min(c[2] for c in curve),
             facts["best_step"], facts["steps_done"], baseline)
    if not facts["converged"]:
        log.warning("not converged: the validation MSE was still falling at the last step (%d); raise "
                    "sgrna.train.steps", facts["steps_done"])
