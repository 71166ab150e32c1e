"""scikit-learn's L2 penalty for the tracks' torch networks, one rule for every track.

scikit-learn's LogisticRegression minimises ``sum of losses + ||w||^2 / (2C)``; divided by the
number of training items ``n`` that is ``mean loss + ||w||^2 / (2 C n)``, the objective a track's
full-batch torch model minimises with :func:`l2_penalty` (weight matrices only, as scikit-learn
leaves the intercept out). ``c = 0`` means no penalty (the source documents' networks).
"""


def weight_matrices(model):
    """The weight matrices of the model's Linear layers (biases excluded)."""
    from torch import nn

    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def l2_penalty(model, c, n_train):
    """``sum(W**2) / (2 c n_train)`` over the weight matrices; 0 when ``c`` is 0 (no penalty)."""
    import torch

    if not c:
        return torch.zeros((), device=weight_matrices(model)[0].device)
    return sum((w ** 2).sum() for w in weight_matrices(model)) / (2.0 * c * n_train)
