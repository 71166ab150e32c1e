"""Counts in, a scaled, split AnnData out: the scrna track's preprocessing, with scanpy.

Steps: load integer counts (a user's h5ad: ``X``, ``.raw.X`` as CELLxGENE files keep them, or a
layer; or the bundled pbmc68k_reduced with its counts recovered from ``.raw``), keep the cells of
the two classes, check the counts are non-negative integers (normalised values are refused with a
hint where the counts may be), ``sc.pp.filter_genes(min_counts)``,
``sc.pp.normalize_total(target_sum=1e6)`` + ``sc.pp.log1p`` (log CPM), a seeded train / validation /
test split (stratified by class with scikit-learn; with a group column, such as the donor, whole
groups), and per-gene scaling to mean 0 and standard deviation 1 fitted on
the training cells only (scanpy's ``sc.pp.scale`` on them) and applied to every cell; a gene
constant in the training cells is 0 everywhere.

The result, ``cells.h5ad``: ``X`` the scaled log CPM (cells x genes, float32), ``layers["counts"]``
and ``layers["log_cpm"]`` (sparse), ``obs`` the input's columns plus ``label`` (class name),
``target`` (1: first class) and ``split`` (train | validation | test), ``var`` the input's columns plus
``n_counts`` (from filter_genes) and the training statistics ``train_mean``, ``train_std``
(scanpy's, with ``ddof=1``) and ``train_constant``; ``uns["scrna"]`` what was done.
"""

import logging
import math

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from ... import seeding
from ...errors import InputError
from ...outputs import atomic_path, write_tsv
from ..splitting import SPLITS, deal_components, linked_components
from . import DEFAULT_SOURCE, MIN_CELLS_PER_SPLIT, STREAM_SPLIT, TRACK

log = logging.getLogger(__name__)

RECOVERY_TARGET = 1e4      # pbmc68k_reduced's .raw.X: log1p of counts normalised to 1e4 per cell
RECOVERY_TOLERANCE = 1e-3  # recovered values lie within this fraction (of max(count, 1)) of an integer


def quiet_scanpy():
    """scanpy writes nothing but errors, and no figures or caches."""
    sc.settings.verbosity = 0
    sc.settings.autosave = False
    sc.settings.autoshow = False


# --- loading -------------------------------------------------------------------------------------

def recover_counts(log_normalised, totals, source=DEFAULT_SOURCE, target=RECOVERY_TARGET,
                   tolerance=RECOVERY_TOLERANCE):
    """Integer counts ``round(expm1(x) * total / target)`` from log1p of counts normalised to
    ``target`` per cell.

    ``log_normalised``: cells x genes (sparse or dense); ``totals``: each cell's total count
    (``[cells]``, the normaliser). Returns ``(counts, max_deviation)``: counts as a float32 CSR
    matrix, and the largest ``|value - round(value)| / max(round(value), 1)`` before rounding.
    InputError when a value is negative or further than ``tolerance`` from an integer.
    """
    matrix = sp.csr_matrix(log_normalised, dtype=np.float64)
    totals = np.asarray(totals, dtype=np.float64).reshape(-1)
    scaled = sp.diags(totals / target) @ matrix.expm1()
    values = scaled.data
    rounded = np.round(values)
    deviation = np.abs(values - rounded) / np.maximum(np.abs(rounded), 1.0)
    if values.size and values.min() < 0:
        raise InputError(source, "raw.X", float(values.min()), "recovered counts are negative")
    worst = float(deviation.max()) if deviation.size else 0.0
    if worst > tolerance:
        raise InputError(source, "raw.X", worst, f"recovered counts are not integers (relative deviation above "
                                                 f"{tolerance})")
    scaled.data = rounded
    scaled.eliminate_zeros()
    return scaled.astype(np.float32).tocsr(), worst


def load_default():
    """scanpy's bundled pbmc68k_reduced (700 PBMCs, no download) with integer counts in ``X``.

    Its ``.raw.X`` is log1p of counts normalised to 1e4 per cell, ``obs["n_counts"]`` each cell's
    total: the counts come back by :func:`recover_counts`; gene names from ``.raw.var_names``.
    Returns ``(adata, info)`` with ``info["recovery_max_deviation"]``.
    """
    bundled = sc.datasets.pbmc68k_reduced()
    counts, worst = recover_counts(bundled.raw.X, bundled.obs["n_counts"].to_numpy())
    adata = anndata.AnnData(X=counts, obs=bundled.obs.copy(), var=pd.DataFrame(index=bundled.raw.var_names.copy()))
    log.info("%s: %d cells x %d genes; counts recovered from .raw (largest relative deviation from an integer "
             "before rounding %.2g, tolerance %g)", DEFAULT_SOURCE, adata.n_obs, adata.n_vars, worst,
             RECOVERY_TOLERANCE)
    return adata, {"counts_source": "raw (recovered)", "recovery_max_deviation": worst}


def read_h5ad(path):
    """A user's AnnData file, read whole. InputError (field ``scrna.h5ad``) when it is missing or
    not a readable h5ad."""
    try:
        return anndata.read_h5ad(path)
    except FileNotFoundError:
        raise InputError(path, "scrna.h5ad", str(path), "file not found") from None
    except Exception as err:  # h5py / anndata raise many types for a file that is not an h5ad
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, "scrna.h5ad", str(path), f"not a readable h5ad file ({problem})") from None


def counts_matrix(adata, counts, source):
    """``(matrix, var)``: the matrix ``counts`` names (``X``, ``raw``: ``.raw.X`` with ``.raw.var``,
    or ``layers[counts]``) and its genes' table. InputError when absent."""
    if counts == "X":
        if adata.X is None:
            raise InputError(source, "scrna.counts", counts, "the file has no X matrix")
        return adata.X, adata.var
    if counts == "raw":
        if adata.raw is None:
            raise InputError(source, "scrna.counts", counts, f"the file has no .raw ({count_places(adata)})")
        return adata.raw.X, adata.raw.var
    if counts not in adata.layers:
        raise InputError(source, "scrna.counts", counts, f"no such layer ({count_places(adata)})")
    return adata.layers[counts], adata.var


def count_places(adata):
    """Where counts may be, for a message: ``layers: 'a', 'b'; or X, raw``."""
    have = ", ".join(map(repr, adata.layers.keys())) or "none"
    return f"layers: {have}; or X" + (", raw" if adata.raw is not None else "")


def check_counts(matrix, source, counts, obs_names, var_names, places=""):
    """InputError unless ``matrix`` (cells x genes, sparse or dense) holds non-negative integers.

    The message names the first offending cell and gene, its value and how many values are bad;
    when the values are not integers it says the matrix looks normalised and names ``places``
    (where else counts may be). Returns the counts as a float32 CSR matrix.
    """
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        matrix = np.asarray(matrix)
    csr = sp.csr_matrix(matrix)
    values = csr.data
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
            or values.dtype == np.bool_):
        raise InputError(source, "scrna.counts", counts, f"values of type {values.dtype} are not counts")
    bad_negative = values < 0
    if np.issubdtype(values.dtype, np.floating):
        bad_other = ~np.isfinite(values) | (values != np.round(values))
    else:
        bad_other = np.zeros(values.shape, dtype=bool)
    bad = bad_negative | bad_other
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(csr.indptr, k, side="right") - 1)
        col = int(csr.indices[k])
        kind = "negative" if bad_negative[k] else "not an integer"
        hint = ""
        if not bad_negative[k] and np.isfinite(values[k]):
            hint = f"; the matrix looks normalised: set scrna.counts to where the integer counts are ({places})" \
                if places else "; the matrix looks normalised"
        raise InputError(source, "scrna.counts", counts,
                         f"not counts: value {values[k].item()!r} at cell {obs_names[row]!r}, gene "
                         f"{var_names[col]!r} is {kind} ({int(bad.sum())} such values; counts must be "
                         f"non-negative integers{hint})")
    return csr.astype(np.float32)


# --- cells of the two classes --------------------------------------------------------------------

def class_labels(adata, key, source):
    """``obs[key]`` as strings (``[cells]``). InputError when the column is missing."""
    if key not in adata.obs.columns:
        have = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
        raise InputError(source, "scrna.cell_type_key", key, f"no such obs column (columns: {have})")
    return adata.obs[key].astype(str).to_numpy()


def select_classes(labels, classes, key, source):
    """Boolean mask ``[cells]`` of the cells of the two ``classes``. InputError naming a class that
    has no cell, with the column's most common values."""
    present = pd.Series(labels).value_counts()
    for name in classes:
        if name not in present.index:
            common = ", ".join(f"{v!r} ({n})" for v, n in present.head(8).items())
            raise InputError(source, "scrna.classes", name, f"no cell has obs[{key!r}] == this class "
                                                           f"(most common: {common})")
    return np.isin(labels, list(classes))


def cells_needed(test_fraction, validation_fraction, per_split=MIN_CELLS_PER_SPLIT):
    """Fewest cells of a class for ``per_split`` of them in each split at these fractions."""
    smallest = min(test_fraction, validation_fraction, 1 - test_fraction - validation_fraction)
    return math.ceil(per_split / smallest - 1e-9)


def check_class_sizes(sizes, test_fraction, validation_fraction, source):
    """InputError when a class (``{name: cells}``) is too small for the split."""
    need = cells_needed(test_fraction, validation_fraction)
    for name, n in sizes.items():
        if n < need:
            raise InputError(source, "scrna.classes", name,
                             f"{n} cells: test_fraction={test_fraction}, validation_fraction={validation_fraction} "
                             f"needs at least {need} to put {MIN_CELLS_PER_SPLIT} in each split")


# --- scanpy preprocessing ------------------------------------------------------------------------

def filter_and_normalise(adata, min_counts, source):
    """In place: ``sc.pp.filter_genes(min_counts)``, counts kept in ``layers["counts"]``, then
    ``normalize_total(1e6)`` + ``log1p`` (log CPM, also kept in ``layers["log_cpm"]``).
    InputError (field ``scrna.min_counts``) when no gene is left."""
    n_before = adata.n_vars
    sc.pp.filter_genes(adata, min_counts=min_counts)
    if adata.n_vars == 0:
        raise InputError(source, "scrna.min_counts", min_counts,
                         f"no gene is left: none of the {n_before} genes has this many counts in the "
                         f"{adata.n_obs} cells of the two classes")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e6)
    sc.pp.log1p(adata)
    adata.layers["log_cpm"] = adata.X.copy()
    log.info("genes: %d of %d with at least %d counts; log CPM", adata.n_vars, n_before, min_counts)


def split_seed(seed):
    """The split's random_state (an int), from the config seed."""
    return seeding.int_seed(seed, TRACK, STREAM_SPLIT, bits=31)


def stratified_split(target, test_fraction, seed, validation_fraction=0.0):
    """``"train"`` / ``"validation"`` / ``"test"`` per cell (``[cells]``, the input's order):
    scikit-learn's stratified ``train_test_split`` takes ``ceil(test_fraction * cells)`` test cells,
    then ``round(validation_fraction * cells)`` validation cells of the rest."""
    index = np.arange(len(target))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=target, random_state=split_seed(seed))
    split = np.full(len(target), "train", dtype=object)
    split[test] = "test"
    n_validation = int(round(validation_fraction * len(target)))
    if n_validation:
        _, validation = train_test_split(rest, test_size=n_validation, stratify=np.asarray(target)[rest],
                                         random_state=split_seed(seed))
        split[validation] = "validation"
    return split


def grouped_split(groups, test_fraction, validation_fraction, seed):
    """The split with every group (a donor, a batch) whole on one side (``seqmux.tracks.splitting``)."""
    components = linked_components(list(groups))
    return deal_components(components, test_fraction, validation_fraction, seeding.rng(seed, TRACK, STREAM_SPLIT))


def fit_scaling(log_cpm_train):
    """Per-gene scaling statistics of the training cells (``[train cells, genes]``), by scanpy's
    ``sc.pp.scale``: ``(mean, std, constant)``, each ``[genes]``; ``std`` with ``ddof=1`` and 1
    for constant genes (scanpy's convention), ``constant`` True where every training cell has the
    same value."""
    dense = log_cpm_train.toarray() if sp.issparse(log_cpm_train) else np.asarray(log_cpm_train)
    train = anndata.AnnData(X=dense.astype(np.float32, copy=True))
    sc.pp.scale(train)
    constant = np.ptp(dense, axis=0) == 0
    return (train.var["mean"].to_numpy(np.float64), train.var["std"].to_numpy(np.float64), constant)


def apply_scaling(log_cpm, mean, std, constant):
    """``(x - mean) / std`` per gene (``[cells, genes]`` float32), 0 for genes constant in the
    training cells (never NaN)."""
    dense = log_cpm.toarray() if sp.issparse(log_cpm) else np.asarray(log_cpm)
    scaled = (dense.astype(np.float64) - mean) / np.where(constant, 1.0, std)
    scaled[:, constant] = 0.0
    return scaled.astype(np.float32)


# --- the stage -----------------------------------------------------------------------------------

def load_counts(h5ad, counts):
    """``(adata, source, info)``: the input with its cells, obs, var (and gene names), whose counts
    are read by :func:`counts_matrix`; the default's counts are already in ``X``."""
    if not h5ad:
        adata, info = load_default()
        return adata, DEFAULT_SOURCE, info
    adata = read_h5ad(h5ad)
    info = {"counts_source": counts if counts in ("X", "raw") else f"layers[{counts}]", "recovery_max_deviation": None}
    log.info("%s: %d cells x %d genes", h5ad, adata.n_obs, adata.n_vars)
    return adata, str(h5ad), info


def preprocess(h5ad, cell_type_key, classes, counts, min_counts, test_fraction, seed, validation_fraction=0.15,
               group_column=""):
    """The processed AnnData of the two classes (see the module's docstring)."""
    quiet_scanpy()
    adata, source, info = load_counts(h5ad, counts)
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][0]
        raise InputError(source, "obs_names", dup, "cell names must be unique (split.tsv names cells by them)")
    labels = class_labels(adata, cell_type_key, source)
    keep = select_classes(labels, classes, cell_type_key, source)
    if group_column and group_column not in adata.obs.columns:
        have = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
        raise InputError(source, "scrna.split.group_column", group_column, f"no such obs column (columns: {have})")
    matrix, var = counts_matrix(adata, "X" if not h5ad else counts, source)
    matrix = matrix[np.flatnonzero(keep)]
    obs_names, var_names = adata.obs_names[keep], var.index
    matrix = check_counts(matrix, source, counts if h5ad else "X", obs_names, var_names, count_places(adata))
    sizes = {name: int((labels[keep] == name).sum()) for name in classes}
    check_class_sizes(sizes, test_fraction, validation_fraction, source)
    cells = anndata.AnnData(X=matrix, obs=adata.obs.loc[keep].copy(), var=var.copy())
    if not cells.var_names.is_unique:
        log.warning("gene names are not unique: made unique by scanpy's var_names_make_unique")
        cells.var_names_make_unique()
    info.update(n_cells_input=int(adata.n_obs), n_genes_input=int(adata.n_vars))
    del adata
    log.info("cells: %d of the two classes (%s)", cells.n_obs, ", ".join(f"{k!r}: {v}" for k, v in sizes.items()))

    filter_and_normalise(cells, min_counts, source)
    label = labels[keep]
    target = (label == classes[0]).astype(np.int8)
    if group_column:
        split = grouped_split(cells.obs[group_column].astype(str).to_numpy(), test_fraction, validation_fraction, seed)
    else:
        split = stratified_split(target, test_fraction, seed, validation_fraction)
    for name in classes:
        for part in SPLITS:
            n = int(((label == name) & (split == part)).sum())
            if n < MIN_CELLS_PER_SPLIT:  # cells_needed makes this rare; the split's rounding decides
                more = "more cells or groups" if group_column else "more cells"
                raise InputError(source, "scrna.classes", name, f"only {n} cells in the {part} split; give "
                                                               f"{more} or other fractions")
    is_train = split == "train"
    mean, std, constant = fit_scaling(cells.layers["log_cpm"][np.flatnonzero(is_train)])
    cells.X = apply_scaling(cells.layers["log_cpm"], mean, std, constant)
    replaced = [k for k in ("label", "target", "split") if k in cells.obs.columns and k != cell_type_key]
    if replaced:
        log.warning("obs columns %s of the input are replaced by the track's own", ", ".join(map(repr, replaced)))
    cells.obs["label"] = pd.Categorical(label, categories=list(classes))
    cells.obs["target"] = target
    cells.obs["split"] = pd.Categorical(split, categories=list(SPLITS))
    cells.var["train_mean"] = mean
    cells.var["train_std"] = std
    cells.var["train_constant"] = constant
    cells.uns["scrna"] = {
        "source": source, "cell_type_key": cell_type_key, "classes": list(classes), "positive_class": classes[0],
        "counts": info["counts_source"], "min_counts": int(min_counts), "test_fraction": float(test_fraction),
        "validation_fraction": float(validation_fraction), "group_column": str(group_column), "seed": int(seed),
        "n_cells_input": info["n_cells_input"], "n_genes_input": info["n_genes_input"],
    }
    if info["recovery_max_deviation"] is not None:  # the default's counts, recovered from .raw
        cells.uns["scrna"]["recovery_max_deviation"] = info["recovery_max_deviation"]
    log.info("split: %d train, %d validation, %d test cells%s; %d genes constant in the training cells set to 0",
             int(is_train.sum()), int((split == "validation").sum()), int((split == "test").sum()),
             f" (whole groups of obs[{group_column!r}])" if group_column else " (stratified by class)",
             int(constant.sum()))
    return cells


def split_table(cells):
    """One row per kept cell: ``id`` (the obs name), ``split``, ``label`` (class name), ``target``
    (1: first class)."""
    return pd.DataFrame({"id": cells.obs_names.to_numpy(), "split": cells.obs["split"].astype(str).to_numpy(),
                         "label": cells.obs["label"].astype(str).to_numpy(),
                         "target": cells.obs["target"].to_numpy()})


def write_cells(cells, out):
    """``cells`` as an h5ad file (whole or not at all)."""
    with atomic_path(out) as tmp:
        cells.write_h5ad(tmp)


def preprocess_scrna(h5ad, cell_type_key, classes, counts, min_counts, split, seed, out_cells, out_split):
    """Stage ``preprocess_scrna``: the processed AnnData (``out_cells``) and ``split.tsv``; ``split``
    the config's ``scrna.split`` section."""
    classes = [str(c) for c in classes]
    cells = preprocess(h5ad, cell_type_key, classes, counts, min_counts, split["test_fraction"], seed,
                       split["validation_fraction"], split["group_column"])
    write_tsv(split_table(cells), out_split)
    write_cells(cells, out_cells)
    log.info("wrote %s (%d cells x %d genes) and %s", out_cells, cells.n_obs, cells.n_vars, out_split)
