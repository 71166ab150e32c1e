"""GC-HMM track, training: Adam on the NLL of the true states, in seeded batches.
"""

import logging

import numpy as np

from ... import checkpoint, seeding
from ...errors import InputError
from ...outputs import write_tsv
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


def train_model(tokens, labels, lengths, n_states, sizes, bidirectional, seed, device, name):
    """Train one network with Adam on the NLL of the true states (padding ignored), batches drawn
    in a seeded order. ``sizes``: embedding, hidden, layers, lr, epochs, batch_size, schedule
    (``constant``, or ``cosine``: lr annealed to 0 over the run). Returns
    ``(model, per-epoch mean loss [epochs])``."""
    import torch

    from ...runtime import progress

    stream = f"{seed[1]}:{'bigru' if bidirectional else 'gru'}"  # seed = (config seed, preset)
    with seeding.torch_seeded(seed[0], TRACK, f"init:{stream}"):
        model = build_model(n_states, sizes["embedding"], sizes["hidden"], sizes["layers"], bidirectional)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=sizes["lr"])
    n, bs = len(tokens), int(sizes["batch_size"])
    total_steps = sizes["epochs"] * -(-n // bs)
    schedule = sizes.get("schedule", "constant")
    if schedule == "cosine":  # lr from sizes["lr"] down to 0 over the run, one step per batch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    elif schedule == "constant":
        sched = None
    else:
        raise InputError("config", "gc_hmm.model.schedule", schedule, "constant or cosine")
    loss_fn = torch.nn.NLLLoss(ignore_index=-100)
    x, y, lens = (torch.as_tensor(a) for a in (tokens, labels, lengths))
    rng = seeding.rng(seed[0], TRACK, f"batches:{stream}")
    epoch_loss = []
    bar = progress(range(sizes["epochs"]), desc=name)
    for _ in bar:
        order = rng.permutation(n)
        total, count = 0.0, 0
        for i in range(0, n, bs):
            b = torch.as_tensor(order[i:i + bs])
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
        epoch_loss.append(total / count)
        bar.set_postfix(loss=f"{epoch_loss[-1]:.4f}")
    return model.cpu().eval(), np.array(epoch_loss)


def nll(prob, labels):
    """Mean negative log-probability (nats) of the true states (labels -100 ignored); ``prob``
    ``[n, L, S]``, floored at 1e-12."""
    mask = labels >= 0
    p = np.take_along_axis(prob, np.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-np.log(np.maximum(p[mask], 1e-12)).mean())


def train(train_tsv, hmm_json, out_models, log_tsv, loss_png, preset, sizes, seed, device="cpu"):
    """Stage: train the left-to-right GRU and the bidirectional GRU of a preset on its train rows.

    ``out_models``: ``{name: path}`` for ``gru`` and ``bigru`` (each a ``torch.save`` dict with the
    state dict, the sizes and the states). Writes the per-epoch loss of both (TSV) and the loss
    curve beside the best achievable losses (the NLL of the filtered and posterior probabilities
    with the HMM's parameters, on the whole training rows; the networks train on pieces of
    ``sizes['chunk']`` bp, whose first bases lack the context before them, so their training loss
    sits a little above these floors).
    """
    import pandas as pd

    from ...plots import plot_curves
    from ...runtime import choose_device

    dev = choose_device(device, "config", "gc_hmm.device")
    hmm = read_hmm(hmm_json)
    tokens, labels, lengths = encode_rows(read_sets(train_tsv, hmm), hmm.states)
    filtered, _ = forward_filter(tokens, lengths, hmm)
    floors = {"gru": nll(filtered, labels), "bigru": nll(backward_smooth(tokens, lengths, hmm, filtered), labels)}
    pieces = chunk_rows(tokens, labels, lengths, int(sizes.get("chunk", 0)))
    log.info("%s: %d train rows, %d bases, trained as %d pieces of up to %d bp", preset, len(tokens), lengths.sum(),
             len(pieces[0]), pieces[0].shape[1])
    curves = {}
    for name, bidirectional in MODELS.items():
        model, losses = train_model(*pieces, len(hmm.states), sizes, bidirectional, (seed, preset), dev,
                                    f"{preset} {name}")
        curves[name] = losses
        log.info("%s %s: final training NLL %.4f (best achievable %.4f)", preset, name, losses[-1], floors[name])
        checkpoint.save(out_models[name], TRACK, model, sizes=dict(sizes), states=list(hmm.states),
                        bidirectional=bool(bidirectional))
    epochs = np.arange(1, sizes["epochs"] + 1)
    write_tsv(pd.DataFrame({"epoch": epochs, **{f"{k}_loss": v for k, v in curves.items()},
                            "filtering_nll": floors["gru"], "posterior_nll": floors["bigru"]}), log_tsv)
    plot_curves(epochs, {"GRU (train)": curves["gru"], "biGRU (train)": curves["bigru"],
                         "filtering (best left-to-right)": np.full(len(epochs), floors["gru"]),
                         "posterior (best whole-sequence)": np.full(len(epochs), floors["bigru"])},
                loss_png, "epoch", "NLL per base (nats)", title=f"GC-HMM {preset}: training loss")
