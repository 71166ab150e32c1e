"""circuitSNP track, models: the source's network, the logistic regression, their files and the BCE.
"""

import numpy as np

from ... import checkpoint
from .data import TRACK


def build_network(n_features, hidden, generator=None, bias_init="default"):
    """The source's network: ``Linear(n, h1) - ReLU - ... - Linear(h_last, 2) - softmax`` as an
    ``nn.Sequential`` whose output ``[batch, 2]`` is (P(open), P(closed)); Xavier-uniform weights
    (from ``generator``); biases as PyTorch's default (uniform in +-1/sqrt(fan_in), from
    ``generator``: the source leaves them so) or ``zero``."""
    import torch
    from torch import nn

    layers, width = [], n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers += [nn.Linear(width, 2), nn.Softmax(dim=1)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                if bias_init == "zero":
                    layer.bias.zero_()
                else:
                    bound = 1.0 / layer.in_features ** 0.5
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return net


def open_logit(net, x):
    """``logit(P(open))`` ``[batch]`` of the network: the difference of its two pre-softmax outputs
    (exact where the float32 probability would round to 1)."""
    z = net[:-1](x)
    return z[:, 0] - z[:, 1]


def network_logit(net, x):
    """``logit(P(open))`` ``[n]`` float64 of feature rows ``x [n, F]``."""
    import torch

    with torch.no_grad():
        return open_logit(net, torch.as_tensor(np.asarray(x, dtype=np.float32))).double().numpy()


def fit_logistic(x, y, c):
    """scikit-learn ``LogisticRegression(C=c)`` (L2, lbfgs) on the same features: the reference a
    user would try first. Returns ``{coef, intercept, C}`` (plain lists, for JSON)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=5000).fit(np.asarray(x, dtype=np.float64), y)
    return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]), "C": c}


def logistic_probability(model, x):
    """P(open) ``[n]`` of a ``fit_logistic`` model."""
    from scipy.special import expit

    return expit(np.asarray(x, dtype=np.float64) @ np.asarray(model["coef"]) + model["intercept"])


def save_network(net, path, names, hidden, facts):
    """``model.pt`` (``seqmux.checkpoint``, kind ``circuitsnp``): the weights with the sizes, the
    feature names and the training facts."""
    checkpoint.save(path, TRACK, net, n_features=len(names), hidden=[int(h) for h in hidden],
                    features=[str(n) for n in names], training=dict(facts))


def load_network(path):
    """``(net, meta)`` from ``save_network``'s file; an InputError naming the file when it is not one."""
    state, meta = checkpoint.load(path, TRACK, field="circuitsnp model")
    net = checkpoint.load_into(build_network(meta["n_features"], meta["hidden"]), state, path, TRACK,
                               "circuitsnp model")
    return net, meta


def bce(y, p, eps=1e-12):
    """Mean binary cross-entropy (natural log) of labels ``y`` under probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())
