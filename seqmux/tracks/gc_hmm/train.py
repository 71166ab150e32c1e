"""GC-HMM track, training: Adam on the NLL of the true states, in seeded batches, with early
stopping on the validation rows.
"""

import logging

import numpy as np

from ... import checkpoint, seeding
from ...errors import InputError
from ...outputs import write_tsv
from ..stopping import EarlyStopping
from .data import TRACK, encode_rows, read_hmm, read_sets
from .inference import backward_smooth, forward_filter
from .model import MODELS, build_model

log = logging.getLogger(__name__)


def chunk_rows(tokens, labels, lengths, size):
    """Training rows cut into consecutive pieces of ``size`` positions (the last piece of a row may
    be shorter; ``size`` 0: rows unchanged). Returns ``(tokens, labels, lengths)`` of the pieces,
    ``[m, size]`` each (padding as in :func:`encode_rows`), in row order."""
    if not size or tokens.shape[1] <= size:
        return tokens, labels, lengths
    n, width = tokens.shape
    k = -(-width // size)
    pad = k * size - width
    t = np.pad(tokens, ((0, 0), (0, pad))).reshape(n * k, size)
    y = np.pad(labels, ((0, 0), (0, pad)), constant_values=-100).reshape(n * k, size)
    ln = np.clip(lengths[:, None] - size * np.arange(k)[None, :], 0, size).reshape(-1)
    keep = ln > 0
    return t[keep], y[keep], ln[keep]


def validation_nll(model, tokens, labels, lengths, device, batch_size=256):
    """Mean NLL (nats per base) of the true states under a network, padding ignored."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            x = torch.as_tensor(tokens[i:i + batch_size]).to(device)
            y = torch.as_tensor(labels[i:i + batch_size]).to(device)
            out = model(x, torch.as_tensor(lengths[i:i + batch_size]))
            total += float(torch.nn.functional.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1),
                                                        ignore_index=-100, reduction="sum"))
            count += int((y >= 0).sum())
    model.train()
    return total / count


def train_model(train, validation, n_states, sizes, bidirectional, seed, device, name):
    """Train one network with Adam on the NLL of the true states (padding ignored), batches drawn
    in a seeded order, for at most ``sizes['max_epochs']`` passes over ``train`` (``(tokens, labels,
    lengths)``); every ``record_every`` steps the validation NLL on ``validation`` (whole rows) is
    recorded, the weights of the lowest kept, and training stops after ``patience`` records without
    a loss lower by more than the fraction ``min_improvement`` (``seqmux.tracks.stopping``; 0: never).
    ``sizes``: embedding, hidden, layers, lr, schedule (``constant``, or ``cosine``: lr annealed to 0
    over the whole budget), max_epochs, batch_size, record_every, patience, min_improvement.
    Returns ``(model with the kept weights, log, facts)``: ``log`` a DataFrame of ``step``, ``epoch``
    (fractional), ``train_loss`` (mean over the steps since the last record), ``validation_loss``;
    ``facts``: ``best_step``, ``steps_done``, ``converged``, ``best_validation_loss``."""
    import pandas as pd
    import torch

    from ...runtime import progress

    stream = f"{seed[1]}:{'bigru' if bidirectional else 'gru'}"  # seed = (config seed, preset)
    with seeding.torch_seeded(seed[0], TRACK, f"init:{stream}"):
        model = build_model(n_states, sizes["embedding"], sizes["hidden"], sizes["layers"], bidirectional)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=sizes["lr"])
    tokens, labels, lengths = train
    n, bs = len(tokens), int(sizes["batch_size"])
    per_epoch = -(-n // bs)
    total_steps = int(sizes["max_epochs"]) * per_epoch
    schedule = sizes.get("schedule", "constant")
    if schedule == "cosine":  # lr from sizes["lr"] down to 0 over the budget, one step per batch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    elif schedule == "constant":
        sched = None
    else:
        raise InputError("config", "gc_hmm.train.schedule", schedule, "constant or cosine")
    every = max(1, int(sizes["record_every"]))
    stopper = EarlyStopping(sizes["patience"], sizes["min_improvement"])
    loss_fn = torch.nn.NLLLoss(ignore_index=-100)
    x, y, lens = (torch.as_tensor(a) for a in (tokens, labels, lengths))
    rng = seeding.rng(seed[0], TRACK, f"batches:{stream}")
    rows, total, count, step = [], 0.0, 0, 0
    bar = progress(None, total_steps, name)
    order = None
    for step in range(1, total_steps + 1):
        i = (step - 1) % per_epoch
        if i == 0:
            order = rng.permutation(n)
        b = torch.as_tensor(order[i * bs:(i + 1) * bs])
        width = int(lens[b].max())
        out = model(x[b, :width].to(device), lens[b])
        target = y[b, :width].to(device)
        loss = loss_fn(out.reshape(-1, n_states), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        k = int((target >= 0).sum())
        total += float(loss.detach()) * k
        count += k
        bar.update(1)
        if step % every == 0 or step == total_steps:
            v = validation_nll(model, *validation, device)
            rows.append((step, step / per_epoch, total / count, v))
            total, count = 0.0, 0
            bar.set_postfix(loss=f"{rows[-1][2]:.4f}", validation=f"{v:.4f}")
            if stopper.update(step, v, model):
                break
    bar.close()
    stopper.restore(model)
    log_frame = pd.DataFrame(rows, columns=["step", "epoch", "train_loss", "validation_loss"])
    facts = dict(stopper.facts("step"), best_validation_loss=stopper.best_loss)
    return model.cpu().eval(), log_frame, facts


def nll(prob, labels):
    """Mean negative log-probability (nats) of the true states (labels -100 ignored); ``prob``
    ``[n, L, S]``, floored at 1e-12."""
    mask = labels >= 0
    p = np.take_along_axis(prob, np.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-np.log(np.maximum(p[mask], 1e-12)).mean())


def train(train_tsv, validation_tsv, hmm_json, out_model, log_tsv, loss_png, preset, sizes, seed, device="cpu"):
    """Stage: train the left-to-right GRU and the bidirectional GRU of a preset on its train rows,
    with early stopping on its validation rows.

    ``out_model``: one ``seqmux.checkpoint`` file (kind ``gc_hmm``) with both networks
    (``{"gru": state, "bigru": state}``), the sizes, the states and each network's training facts.
    Writes ``training_log.tsv`` (one block per network, column ``model``) and the loss curve beside
    the best achievable validation losses (the NLL of the filtered and posterior probabilities with
    the HMM's parameters, on the whole validation rows).
    """
    import pandas as pd

    from ...plots import plot_curves
    from ...runtime import choose_device

    dev = choose_device(device, "config", "gc_hmm.device")
    hmm = read_hmm(hmm_json)
    tokens, labels, lengths = encode_rows(read_sets(train_tsv, hmm), hmm.states)
    validation = encode_rows(read_sets(validation_tsv, hmm), hmm.states)
    filtered, _ = forward_filter(validation[0], validation[2], hmm)
    floors = {"gru": nll(filtered, validation[1]),
              "bigru": nll(backward_smooth(validation[0], validation[2], hmm, filtered), validation[1])}
    pieces = chunk_rows(tokens, labels, lengths, int(sizes.get("chunk", 0)))
    log.info("%s: %d train rows, %d bases, trained as %d pieces of up to %d bp; %d validation rows", preset,
             len(tokens), lengths.sum(), len(pieces[0]), pieces[0].shape[1], len(validation[0]))
    models, logs, facts = {}, {}, {}
    for name, bidirectional in MODELS.items():
        models[name], logs[name], facts[name] = train_model(pieces, validation, len(hmm.states), sizes, bidirectional,
                                                            (seed, preset), dev, f"{preset} {name}")
        f = facts[name]
        log.info("%s %s: kept step %d of %d, validation NLL %.4f (best achievable %.4f)", preset, name,
                 f["best_step"], f["steps_done"], f["best_validation_loss"], floors[name])
        if not f["converged"]:
            log.warning("%s %s not converged: the validation NLL was still falling at the last step (%d); raise "
                        "gc_hmm.train.max_epochs", preset, name, f["steps_done"])
    checkpoint.save(out_model, TRACK, models, sizes=dict(sizes), states=list(hmm.states),
                    training={name: dict(f) for name, f in facts.items()},
                    floors={name: float(v) for name, v in floors.items()})
    write_tsv(pd.concat([lg.assign(model=name) for name, lg in logs.items()])[
        ["model", "step", "epoch", "train_loss", "validation_loss"]], log_tsv)
    epochs = np.union1d(logs["gru"]["epoch"], logs["bigru"]["epoch"])
    series = {}
    for name, label in (("gru", "GRU"), ("bigru", "biGRU")):
        for part in ("train", "validation"):
            series[f"{label} ({part})"] = np.interp(epochs, logs[name]["epoch"], logs[name][f"{part}_loss"],
                                                    right=np.nan)
    series["filtering (best left-to-right, validation)"] = np.full(len(epochs), floors["gru"])
    series["posterior (best whole-sequence, validation)"] = np.full(len(epochs), floors["bigru"])
    plot_curves(epochs, series, loss_png, "epoch", "NLL per base (nats)", title=f"GC-HMM {preset}: training")
