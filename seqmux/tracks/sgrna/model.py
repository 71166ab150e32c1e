"""sgRNA track, model: the per-position ReLU network, its base effects and its file.

``y = b + sum_i beta_i relu(w_i . x_i)`` over the kept positions; ``weight [P, 4]`` (A,G,C,T).
"""

import numpy as np
import torch

from ... import checkpoint
from .data import TRACK


class PositionNetwork(torch.nn.Module):
    """``y = b + sum_i beta_i relu(sum_b w_ib x_ib)`` over ``P`` positions (the source's model).

    ``weight [P, 4]`` (A,G,C,T), ``beta [P]``, ``intercept []``. Input one-hot ``[B, 4, P]``.
    """

    def __init__(self, n_positions, init=0.5):
        """Every weight and head coefficient starts at ``init``, the intercept at ``-P init^2``, so
        that the first prediction is 0 for every guide and every base's effect starts at 0."""
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((n_positions, 4), float(init)))
        self.beta = torch.nn.Parameter(torch.full((n_positions,), float(init)))
        self.intercept = torch.nn.Parameter(torch.tensor(-n_positions * float(init) ** 2))

    def scores(self, x):
        """Neuron outputs ``s [B, P]``."""
        return torch.relu((x * self.weight.T).sum(1))

    def forward(self, x):
        """Predictions ``[B]``."""
        return self.scores(x) @ self.beta + self.intercept

    def contributions(self):
        """Each neuron's actual contribution for each base, ``beta_i relu(w_ib)``, as ``[4, P]``
        (A,G,C,T) float64, in the units the network was trained on: a base with a negative weight
        contributes nothing (the source's ``beta_i * w_ib`` ignored the ReLU)."""
        with torch.no_grad():
            return (self.beta[:, None] * torch.relu(self.weight)).T.cpu().double().numpy()

    def effects(self, seen=None):
        """Base effects ``[4, P]``: ``contributions`` centred per position (``centre_effects``)."""
        return centre_effects(self.contributions(), seen)


def centre_effects(values, seen=None):
    """``values [4, P]`` minus each position's mean over the bases ``seen [4, P]`` there (all when
    None); NaN for a base never seen at a position (its effect is not identifiable). Only the
    differences within a position are identifiable: the intercept absorbs each position's mean."""
    values = np.asarray(values, dtype=np.float64)
    seen = np.ones(values.shape, dtype=bool) if seen is None else np.asarray(seen, dtype=bool)
    mean = np.where(seen, values, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    return np.where(seen, values - mean, np.nan)


def predict(model, scaling, onehot):
    """Predictions ``[N]`` float64 in outcome units for one-hot ``[N, 4, P]``."""
    with torch.no_grad():
        z = model(torch.as_tensor(np.asarray(onehot), dtype=torch.float32)).double().numpy()
    return z * scaling["sd"] / scaling["target_sd"] + scaling["mean"]


def save_model(model, scaling, positions, path, facts=None):
    """``model.pt`` (``seqmux.checkpoint``, kind ``sgrna``): the weights, the outcome scaling, the
    kept positions and the training facts."""
    checkpoint.save(path, TRACK, model, scaling=dict(scaling), positions=[int(p) for p in positions],
                    training=dict(facts or {}))


def load_model(path):
    """``(PositionNetwork, scaling, positions, training facts)`` from ``save_model``'s file; an
    InputError naming the file when it is not one."""
    state, meta = checkpoint.load(path, TRACK, field="sgrna model")
    model = checkpoint.load_into(PositionNetwork(len(meta["positions"])), state, path, TRACK, "sgrna model")
    return model, meta["scaling"], np.array(meta["positions"], dtype=np.int64), meta.get("training", {})
