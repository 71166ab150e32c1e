"""Heatmap of one window of a saved prediction: the ``plot`` command of the command-line tool.

The matrix is rebuilt from the rows of the prediction table (``seqmux.predict``): each label
``chr:pos REF>ALT`` gives a position and an alternative base; the identity substitution (the
reference base) is 0 and substitutions absent from the table (e.g. a VCF window) are blank.
"""

import json
import logging
import os
import re
from difflib import get_close_matches
from pathlib import Path

import numpy as np

from . import BASES
from .errors import InputError

log = logging.getLogger(__name__)

LABEL = re.compile(r"^(?P<chrom>.+):(?P<pos>\d+) (?P<ref>[ACGTN])>(?P<alt>[ACGT])$")
MODE_LABELS = {"logfold": "log-fold change", "diff": "alt - ref"}
TSV_CHUNK = 50_000


def find_prediction(path):
    """The prediction file: ``path`` itself, or ``path``.parquet / ``path``.tsv.gz for a prefix."""
    for candidate in (str(path), f"{path}.parquet", f"{path}.tsv.gz"):
        if os.path.isfile(candidate):
            return Path(candidate)
    raise InputError(path, "prediction", str(path), "no such file (nor PREFIX.parquet / PREFIX.tsv.gz)")


def prefix_of(path):
    """``PREFIX`` of ``PREFIX.tsv.gz`` / ``PREFIX.parquet``."""
    name = str(path)
    for suffix in (".tsv.gz", ".parquet", ".tsv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def prediction_metadata(path):
    """What ``predict`` recorded about the run (``PREFIX.json`` or the parquet metadata), or {}."""
    sidecar = Path(prefix_of(path) + ".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except ValueError:
            log.warning("ignoring unreadable %s", sidecar)
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        if b"seqmux" in meta:
            return json.loads(meta[b"seqmux"])
    return {}


def _is_parquet(path):
    return str(path).endswith(".parquet")


def _check_columns(path, columns):
    if len(columns) < 3 or list(columns[:2]) != ["variant", "window"]:
        raise InputError(path, "prediction", str(path),
                         "not a seqmux prediction (expected columns variant, window, then output names)")


def read_window(path, window=None):
    """``(window, frame)``: the rows of one window of a prediction file. ``window`` (``chr:pos``)
    may be omitted when the file holds a single window."""
    import pandas as pd

    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            _check_columns(path, pq.read_schema(path).names)
            windows = pq.read_table(path, columns=["window"]).column("window").unique().to_pylist()
            wanted = window if window is not None else (windows[0] if windows else None)
            frame = pq.read_table(path, filters=[("window", "=", wanted)]).to_pandas() if wanted else None
        else:  # one pass over the file, keeping only the rows of the window asked for (or the first)
            _check_columns(path, list(pd.read_csv(path, sep="\t", nrows=0).columns))
            seen, parts = {}, []
            for chunk in pd.read_csv(path, sep="\t", dtype={"variant": str, "window": str}, chunksize=TSV_CHUNK):
                seen.update(dict.fromkeys(chunk["window"]))
                wanted = window if window is not None else next(iter(seen), None)
                parts.append(chunk[chunk["window"] == wanted])
            windows = list(seen)
            frame = pd.concat(parts, ignore_index=True) if parts else None
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, "prediction", str(path), f"cannot read: {err}".splitlines()[0]) from None
    shown = ", ".join(windows[:5]) + (", ..." if len(windows) > 5 else "")
    if not windows:
        raise InputError(path, "prediction", str(path), "the prediction has no rows")
    if window is None and len(windows) > 1:
        raise InputError(path, "--window", None, f"the file holds {len(windows)} windows ({shown}): choose one")
    if window is not None and window not in windows:
        raise InputError(path, "--window", window, f"not a window of this prediction (it has {shown})")
    return window or windows[0], frame


def parse_labels(path, labels):
    """``(chrom, positions [M] int64, ref letters [M], alt indices [M])`` of ``chr:pos REF>ALT``
    labels of one window."""
    chroms, pos, ref, alt = set(), [], [], []
    for label in labels:
        match = LABEL.match(label)
        if match is None:
            raise InputError(path, "variant", label, "not a chr:pos REF>ALT label")
        chroms.add(match["chrom"])
        pos.append(int(match["pos"]))
        ref.append(match["ref"])
        alt.append(BASES.index(match["alt"]))
    if len(chroms) != 1:
        raise InputError(path, "window", sorted(chroms), "rows of one window name several chromosomes")
    return chroms.pop(), np.array(pos, dtype=np.int64), np.array(ref), np.array(alt, dtype=np.int64)


def window_matrix(positions, refs, alts, values):
    """``(span [n], reference letters [n], matrix [4, n])`` over the positions min..max: the
    effects at (alt, position), 0 at the reference base, NaN where nothing was scored."""
    first = int(positions.min())
    span = np.arange(first, int(positions.max()) + 1)
    matrix = np.full((4, len(span)), np.nan, dtype=np.float32)
    matrix[alts, positions - first] = values
    letters = np.full(len(span), "", dtype="<U1")
    letters[positions - first] = refs
    for i, base in enumerate(BASES):
        matrix[i, letters == base] = 0.0
    return span, letters, matrix


def choose_profile(path, frame, names, profile=None):
    """The profile to draw: ``profile`` (checked), else the one with the largest |effect|."""
    if profile is not None:
        if profile not in names:
            close = get_close_matches(profile, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(path, "--profile", profile, f"no such output in the prediction{hint}")
        return profile
    strength = np.nan_to_num(np.abs(frame[names].to_numpy(dtype=np.float64)), nan=-1.0).max(axis=0)
    return names[int(np.argmax(strength))]


def draw_heatmap(matrix, span, letters, title, colour_label, out):
    """Write the 4 x n heatmap (rows A,G,C,T) with the reference sequence above it to ``out``
    (format from its suffix)."""
    from .plots import BASE_COLOURS, MAX_LETTERS, draw_effects, draw_sequence, plt, save_figure  # Agg backend
    from matplotlib.patches import Patch
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    n = len(span)
    vmax = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 0.0
    vmax = vmax if vmax > 0 else 1.0
    width = float(np.clip(2.5 + 0.13 * n, 6.0, 22.0))
    fig, (top, ax) = plt.subplots(2, 1, figsize=(width, 3.4), sharex=True,
                                  gridspec_kw=dict(height_ratios=[1, 5], hspace=0.05))
    image = draw_effects(ax, matrix, span, vmax)
    ax.set_ylabel("alt base")
    ax.set_xlabel("position (1-based)")
    if n <= 10:
        ax.set_xticks(span)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%d"))
    size = float(np.clip(0.8 * 72.0 * (width - 2.0) / max(n, 1), 4, 12))  # ~ one column wide
    draw_sequence(top, span, letters, fontsize=size)
    if n > MAX_LETTERS:
        handles = [Patch(color=BASE_COLOURS[b], label=b) for b in BASES]
        top.legend(handles=handles, ncol=4, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False,
                   fontsize=7, handlelength=1, columnspacing=0.8)
    top.set_ylabel("ref", rotation=0, ha="right", va="center")
    top.set_title(title, fontsize=10, loc="left")
    bar = fig.colorbar(image, ax=[top, ax], fraction=0.03, pad=0.01)
    bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # no offset text over the title
    bar.set_label(colour_label)
    save_figure(fig, out, dpi=150)


def plot_prediction(prediction, out, profile=None, window=None):
    """Stage of ``seqmux plot``: the heatmap of one profile in one window of a saved prediction.
    Returns the profile drawn."""
    if Path(out).suffix.lower() not in (".png", ".pdf"):
        raise InputError("command line", "--out", str(out), "expected a .png or .pdf file name")
    path = find_prediction(prediction)
    window, frame = read_window(path, window)
    names = [c for c in frame.columns if c not in ("variant", "window")]
    chrom, positions, refs, alts = parse_labels(path, frame["variant"])
    profile = choose_profile(path, frame, names, profile)
    values = frame[profile].to_numpy(dtype=np.float32)
    span, letters, matrix = window_matrix(positions, refs, alts, values)
    meta = prediction_metadata(path)
    mode = meta.get("mode")
    source = {"exact": "exact ISM", "multiplexer": "multiplexer"}.get(meta.get("model"), "")
    title = (f"{profile}    window {window} ({chrom}:{span[0]}-{span[-1]})"
             + (f"    {source}" if source else ""))
    colour_label = MODE_LABELS.get(mode, "predicted effect")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    draw_heatmap(matrix, span, letters, title, colour_label, out)
    log.info("drew %s of window %s (%d positions, max |effect| %.3g) to %s", profile, window, len(span),
             float(np.nanmax(np.abs(matrix))), out)
    return profile
