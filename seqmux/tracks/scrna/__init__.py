"""Single-cell track: a two-cell-type classifier on AnnData, preprocessed with scanpy.

One of the user's source documents trains, in PyTorch, a logistic model, a network with 50 sigmoid
hidden units and the same network written as a list of layers on two cell types of an AnnData
object, scoring on the cells it trained on. This track does the same as a single-cell analyst
would: scanpy preprocessing, a stratified (or, with ``split.group_column``, donor-grouped) train /
validation / test split, per-gene scaling fitted on the training cells only, early stopping and the
choice of model on validation, and scikit-learn's LogisticRegression on the same features as the
reference.

Modules (this one stays light: the workflow imports ``check_config`` when it starts):

- ``prepare``   load the counts (a user's h5ad: ``X``, ``.raw`` or a layer; or scanpy's bundled
                pbmc68k_reduced with its counts recovered from ``.raw``), check them, subset,
                filter, log CPM, split, scale; stage ``preprocess_scrna``
- ``train``     the three torch models, full-batch Adam on BCE; stage ``train_scrna``
- ``evaluate``  the scikit-learn reference, metrics, top genes, figures; stage ``evaluate_scrna``

Random streams: ``seqmux.seeding`` with track ``"scrna"`` and the streams below.
"""

import os

from ...errors import InputError

TRACK = "scrna"         # the track's name in every seed (seqmux.seeding)
STREAM_SPLIT = "split"  # the train / validation / test split
STREAM_LOGISTIC = "init_logistic"  # the logistic model's initial weights
STREAM_MLP = "init_mlp"  # the hidden-layer network's initial weights (both ways of writing it)

DEFAULT_SOURCE = "scanpy.datasets.pbmc68k_reduced"   # the default input's name in messages
MIN_CELLS_PER_SPLIT = 2  # cells of each class in each split: a scale needs 2 values, AUROC both classes


def check_config(section):
    """Checks of the ``scrna`` config section that need no data (InputError, source ``config``)."""
    classes = list(section["classes"])
    if len(classes) != 2:
        raise InputError("config", "scrna.classes", classes, "give exactly two class names")
    if any(not str(c) for c in classes):
        raise InputError("config", "scrna.classes", classes, "class names must not be empty")
    if str(classes[0]) == str(classes[1]):
        raise InputError("config", "scrna.classes", classes, "the two classes must differ")
    if not section["cell_type_key"]:
        raise InputError("config", "scrna.cell_type_key", section["cell_type_key"], "name an obs column")
    if not section["counts"]:
        raise InputError("config", "scrna.counts", section["counts"], "give X, raw or the name of a layer")
    path = section["h5ad"]
    if path and not os.path.isfile(path):
        raise InputError("config", "scrna.h5ad", path, "file not found")
    split = section["split"]
    if split["test_fraction"] + split["validation_fraction"] >= 1:
        raise InputError("config", "scrna.split.validation_fraction", split["validation_fraction"],
                         f"with test_fraction={split['test_fraction']} nothing is left for training")
