"""Sequence-model layouts as users bring them, for fast ISM's tests and benchmark: each maps
one-hot DNA ``[B, 4, L]`` (A, G, C, T) to ``[B, F]``.

* ``LegacyBeluga``: DeepSEA Beluga written the way the published repositories write it, an
  ``nn.Sequential`` tree with ``Lambda`` modules holding Python lambdas (one of them branches on
  ``len(x.size())``), input unsqueezed to ``[B, 4, 1, L]`` for ``(1, 8)`` ``Conv2d`` kernels.
  Its ``state_dict`` has exactly the published keys and shapes, as ``BelugaFamily``'s has.
* ``BassetLike``: three convolutions with batch norm and max pooling, two dense layers
  (Kelley et al. 2016: 300/200/200 filters of widths 19/11/7, pools 3/4/4, 600 bp).
* ``BPNetLike``: a wide first convolution, a stack of dilated residual convolutions
  (dilation 2, 4, ..., 512), a crop to the central positions and a global-average-pool head
  (Avsec et al. 2021: 64 filters, 9 dilated layers, 1,000 bp outputs).
"""

import torch
from torch import nn

from .models import conv_output_length


class Lambda(nn.Module):
    """A module that applies a Python function (as old converted-from-Lua models do)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _as_matrix(x):
    """A single flattened sample ``[P]`` becomes ``[1, P]``; a batch passes unchanged."""
    return x.view(1, -1) if 1 == len(x.size()) else x


class LegacyBeluga(nn.Module):
    """Beluga in the legacy style (see the module docstring); sizes as ``BelugaFamily``'s."""

    def __init__(self, length=2000, channels=(320, 480, 640), kernel=8, pool=4, hidden=2003, n_outputs=2002):
        super().__init__()
        c1, c2, c3 = channels
        width = conv_output_length(length, kernel, pool)
        k, p = (1, kernel), (1, pool)
        self.model = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(4, c1, k), nn.ReLU(), nn.Conv2d(c1, c1, k), nn.ReLU(), nn.Dropout(0.2), nn.MaxPool2d(p, p),
                nn.Conv2d(c1, c2, k), nn.ReLU(), nn.Conv2d(c2, c2, k), nn.ReLU(), nn.Dropout(0.2), nn.MaxPool2d(p, p),
                nn.Conv2d(c2, c3, k), nn.ReLU(), nn.Conv2d(c3, c3, k), nn.ReLU(),
            ),
            nn.Sequential(
                nn.Dropout(0.5),
                Lambda(lambda x: x.view(x.size(0), -1)),
                nn.Sequential(Lambda(_as_matrix), nn.Linear(c3 * width, hidden)),
                nn.ReLU(),
                nn.Sequential(Lambda(lambda x: x.view(1, -1) if 1 == len(x.size()) else x),
                              nn.Linear(hidden, n_outputs)),
            ),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.model(x.unsqueeze(2))


class BassetLike(nn.Module):
    """Three conv / batch norm / ReLU / max-pool blocks, then two dense layers and a sigmoid."""

    def __init__(self, length=600, filters=(300, 200, 200), widths=(19, 11, 7), pools=(3, 4, 4), hidden=1000,
                 n_outputs=164):
        super().__init__()
        layers, c, w = [], 4, length
        for f, k, p in zip(filters, widths, pools):
            layers += [nn.Conv1d(c, f, k), nn.BatchNorm1d(f), nn.ReLU(), nn.MaxPool1d(p)]
            c, w = f, (w - k + 1) // p
        if w < 1:
            raise ValueError(f"window of {length} bp is too short for the Basset-like layout")
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(c * w, hidden), nn.ReLU(), nn.Dropout(0.3),
                                   nn.Linear(hidden, n_outputs), nn.Sigmoid())

    def forward(self, x):
        return self.dense(self.convs(x))


class BPNetLike(nn.Module):
    """First convolution, dilated residual convolutions (``x = x + relu(conv(x))``), the central
    ``length - 2 * trim`` positions averaged, a dense layer to ``n_outputs`` counts."""

    def __init__(self, length=1000, filters=64, first_width=21, layers=9, trim=64, n_outputs=2):
        super().__init__()
        if length <= 2 * trim:
            raise ValueError(f"window of {length} bp is shorter than twice the trim {trim}")
        self.trim = trim
        self.first = nn.Conv1d(4, filters, first_width, padding=first_width // 2)
        self.dilated = nn.ModuleList(
            nn.Conv1d(filters, filters, 3, padding=2 ** i, dilation=2 ** i) for i in range(1, layers + 1))
        self.counts = nn.Linear(filters, n_outputs)

    def forward(self, x):
        x = torch.relu(self.first(x))
        for conv in self.dilated:
            x = x + torch.relu(conv(x))
        x = x[:, :, self.trim:-self.trim]
        return self.counts(x.mean(dim=-1))
