"""Single-cell track: a two-cell-type classifier on AnnData, preprocessed with scanpy (issue 9).

One of the user's source documents trains, in PyTorch, a logistic model, a network with 50 sigmoid
hidden units and the same network written as a list of layers on two cell types of an AnnData
object, scoring on the cells it trained on. This track does the same as a single-cell analyst
would: scanpy preprocessing, a stratified held-out split, per-gene scaling fitted on the training
cells only, and scikit-learn's LogisticRegression on the same features as the reference.

Modules (this one stays light: the workflow imports ``check_config`` when it starts):

- ``prepare``   load the counts (a user's h5ad, or scanpy's bundled pbmc68k_reduced with its
                counts recovered from ``.raw``), check them, subset, filter, log CPM, split, scale;
                stage ``preprocess_scrna``
- ``train``     the three torch models, full-batch Adam on BCE; stage ``train_scrna``
- ``evaluate``  the scikit-learn reference, metrics, top genes, figures; stage ``evaluate_scrna``

Random streams: ``numpy.random.default_rng([seed, TRACK_SEED, stream])`` with the streams below.
"""

import os

from ...errors import InputError

TRACK_SEED = 9          # this track's constant in every seed sequence (issue 9)
STREAM_SPLIT = 0        # the train/test split
STREAM_LOGISTIC = 1     # the logistic model's initial weights
STREAM_MLP = 2          # the hidden-layer network's initial weights (both ways of writing it)

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
        raise InputError("config", "scrna.counts", section["counts"], "give X or the name of a layer")
    path = section["h5ad"]
    if path and not os.path.isfile(path):
        raise InputError("config", "scrna.h5ad", path, "file not found")
    fraction = section["test_fraction"]
    if not 0 < fraction < 1:
        raise InputError("config", "scrna.test_fraction", fraction, "must lie strictly between 0 and 1")
