"""circuitSNP on a source-format case of 12,000 windows x 300 motifs: the network at several L2
strengths C (validation BCE, what the choice reads), under the default settings (early stopping
on validation, C chosen on validation among ``circuitsnp.model.c``, as the training stage) and
under the source's (Adam 1e-4, 5,000 full-batch epochs, no penalty), against scikit-learn's
logistic regression on the same split.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/circuitsnp_convergence.py [seed]

Prints one line per C (validation BCE and AUROC; the test split is read only for the default's
choice and the source's) and one line per setting: test AUROC, the logistic regression's, the
difference, the kept epoch, the epochs run and ``converged``.
"""

import sys
import time

import numpy as np
import torch
import yaml
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from seqmux.tracks.circuitsnp import model as cm
from seqmux.tracks.circuitsnp import train as ct

GRID = (0.0, 0.1, 0.03, 0.01, 0.003)  # L2 strengths C of the network shown (circuitsnp.model.c: the default's)


def source_case(seed=0, n=12000, features=300, active=40, open_fraction=1 / 12):
    """Binary motif presence (each motif present in 2-30 % of windows) and open / closed labels drawn
    from a sparse logistic model (``active`` motifs with N(0, 1.2) weights, the intercept giving
    ``open_fraction``): the shape of the source's feather files. Returns ``(x [n, F], y [n], p [n])``."""
    from scipy.optimize import brentq

    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.02, 0.3, size=features)
    x = (rng.random((n, features)) < rate).astype(np.float32)
    w = np.zeros(features)
    w[rng.choice(features, active, replace=False)] = rng.normal(0, 1.2, size=active)
    z = x @ w
    b = brentq(lambda b: expit(z + b).mean() - open_fraction, -50, 50)
    p = expit(z + b)
    return x, (rng.random(n) < p).astype(np.int64), p


def main(seed=0):
    torch.set_num_threads(1)
    schema = yaml.safe_load(open("schemas/config.schema.yaml"))["properties"]["circuitsnp"]["properties"]
    train = {k: v["default"] for k, v in schema["train"]["properties"].items()}
    model = {k: v["default"] for k, v in schema["model"]["properties"].items()}
    x, y, _ = source_case(seed)
    n = len(y)
    tr, va, te = slice(0, n * 2 // 3), slice(n * 2 // 3, n * 5 // 6), slice(n * 5 // 6, n)
    logistic = cm.fit_logistic(x[tr], y[tr], train["logistic_c"])
    auc_lr = roc_auc_score(y[te], cm.logistic_probability(logistic, x[te]))
    auc_lr_val = roc_auc_score(y[va], cm.logistic_probability(logistic, x[va]))
    bce_lr_val = cm.bce(y[va], cm.logistic_probability(logistic, x[va]))
    print(f"logistic regression (C {train['logistic_c']:g}): validation BCE {bce_lr_val:.5f}, AUROC {auc_lr_val:.4f}",
          flush=True)
    fixed = (train["lr"], train["max_epochs"], seed)
    rest = {"patience": train["patience"], "min_improvement": train["min_improvement"]}
    fits = {}
    for c in sorted(set(GRID) | set(model["c"])):
        start = time.time()
        fits[c] = ct.fit_network(x[tr], y[tr], x[va], y[va], [5, 5], *fixed, c=c, **rest)
        p_val = expit(cm.network_logit(fits[c][0], x[va]))
        print(f"C {c:g}: validation BCE {cm.bce(y[va], p_val):.5f}, AUROC {roc_auc_score(y[va], p_val):.4f}; kept "
              f"epoch {fits[c][2]['best_epoch']} of {fits[c][2]['epochs_done']} ({time.time() - start:.0f} s)",
              flush=True)
    chosen = min(model["c"], key=lambda c: fits[c][2]["best_validation_loss"])  # as the training stage
    net, _, facts = fits[chosen]
    auc = roc_auc_score(y[te], expit(cm.network_logit(net, x[te])))
    print(f"default: lr {train['lr']:g}, patience {train['patience']}, C chosen on validation from {model['c']}: "
          f"{chosen:g}: network test AUROC {auc:.4f}, logistic {auc_lr:.4f}, difference {auc - auc_lr:+.4f}; kept "
          f"epoch {facts['best_epoch']} of {facts['epochs_done']}, converged {facts['converged']}", flush=True)
    start = time.time()
    net, _, facts = ct.fit_network(x[tr], y[tr], x[va], y[va], [5, 5], 1e-4, 5000, seed, patience=0)
    auc = roc_auc_score(y[te], expit(cm.network_logit(net, x[te])))
    print(f"source: lr 0.0001, 5000 epochs, patience 0, C 0: network test AUROC {auc:.4f}, logistic {auc_lr:.4f}, "
          f"difference {auc - auc_lr:+.4f}; kept epoch {facts['best_epoch']} of {facts['epochs_done']}, converged "
          f"{facts['converged']} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
