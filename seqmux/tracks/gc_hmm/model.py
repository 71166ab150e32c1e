"""GC-HMM track, model: the GRU and the bidirectional GRU, their files and predictions.
"""

import numpy as np

from ... import checkpoint
from .data import SYMBOLS, TRACK


def build_model(n_states, embedding, hidden, layers, bidirectional):
    """The source's network: Embedding(4 bases) -> GRU -> Linear -> LogSoftmax over the states.
    Input tokens ``[batch, L]`` (int64), output log-probabilities ``[batch, L, S]``."""
    import torch
    from torch import nn

    class HmmGru(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(SYMBOLS), embedding)
            self.gru = nn.GRU(embedding, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_states)

        def forward(self, tokens, lengths=None):
            x = self.embed(tokens)
            if lengths is not None and bool((lengths != tokens.shape[1]).any()):  # padded batch: pack
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, _ = self.gru(packed)
                out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
            else:
                out, _ = self.gru(x)
            return torch.log_softmax(self.head(out), dim=-1)

    return HmmGru()

MODELS = {"gru": False, "bigru": True}  # name -> bidirectional


def predict(model, tokens, lengths, device, batch_size=256):
    """State probabilities ``[n, Lmax, S]`` (float64) of a network."""
    import torch

    model = model.to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            x = torch.as_tensor(tokens[i:i + batch_size]).to(device)
            out.append(model(x, torch.as_tensor(lengths[i:i + batch_size])).exp().double().cpu().numpy())
    return np.concatenate(out)


def load_models(path):
    """``({name: network}, meta)`` of the file written by the training stage (both networks, in
    eval mode on the CPU; ``seqmux.checkpoint``: an InputError naming the file when it is not one)."""
    state, meta = checkpoint.load(path, TRACK, field="gc_hmm model")
    s, n_states = meta["sizes"], len(meta["states"])
    models = {}
    for name, bidirectional in MODELS.items():
        model = build_model(n_states, s["embedding"], s["hidden"], s["layers"], bidirectional)
        models[name] = checkpoint.load_into(model, state.get(name, {}), path, TRACK, "gc_hmm model")
    return models, meta
