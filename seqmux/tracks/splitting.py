"""Train / validation / test splits that a scientist accepts, shared by the tracks.

Items that must stay on one side (identical inputs; members of one group: a gene, a donor) are
linked into components (union-find over every key column); whole components are dealt, in a seeded
random order, to the test split until it holds its share of the items, then to validation, the rest
to training. The counts of duplicates and groups go into each track's ``metrics.json``.
"""

import numpy as np
import pandas as pd

from ..errors import InputError
from ..outputs import write_tsv

SPLITS = ("train", "validation", "test")


def linked_components(*keys):
    """Component label ``[n]`` (0-based, in order of first appearance) of items linked when they
    share a value in any of ``keys`` (each a sequence of ``n`` hashable values; ``None`` entries
    link nothing)."""
    n = len(keys[0])
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key in keys:
        first = {}
        for i, value in enumerate(key):
            if value is None:
                continue
            j = first.setdefault(value, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(n)])
    return pd.factorize(roots)[0]


def deal_components(components, test_fraction, validation_fraction, rng):
    """``"train"`` / ``"validation"`` / ``"test"`` per item (object array ``[n]``): components in
    the order of ``rng.permutation``, each whole to the first split still short of its share
    (test: ``round(n * test_fraction)`` items, validation: ``round(n * validation_fraction)``)."""
    components = np.asarray(components)
    n = len(components)
    want = {"test": int(round(n * test_fraction)), "validation": int(round(n * validation_fraction))}
    sizes = np.bincount(components)
    split_of = np.empty(len(sizes), dtype=object)
    filled = {"test": 0, "validation": 0}
    for c in rng.permutation(len(sizes)):
        part = next((p for p in ("test", "validation") if filled[p] < want[p]), "train")
        split_of[c] = part
        if part != "train":
            filled[part] += int(sizes[c])
    return split_of[components]


def check_split_sizes(split, minimum, source, field, what):
    """InputError when a split holds fewer than ``minimum`` items."""
    for part in SPLITS:
        n = int(np.sum(split == part))
        if n < minimum:
            raise InputError(source, field, n, f"{what} in the {part} split: fewer than {minimum}; give more "
                                               f"{what} or other split fractions")


def split_counts(split, components, n_duplicates, groups=None):
    """Flat metrics of a split: ``n_train``, ``n_validation``, ``n_test``, ``n_duplicate_items``
    (items whose input repeats an earlier item's), ``n_linked_components`` and, with ``groups``,
    ``n_groups``."""
    out = {f"n_{part}": int(np.sum(split == part)) for part in SPLITS}
    out["n_duplicate_items"] = int(n_duplicates)
    out["n_linked_components"] = int(len(np.unique(components)))
    if groups is not None:
        out["n_groups"] = int(pd.Series(groups).nunique())
    return out


def write_split(ids, split, out):
    """``split.tsv``: ``id``, ``split`` for every input item, in the input's order."""
    write_tsv(pd.DataFrame({"id": list(ids), "split": list(split)}), out)
