"""One model-file format for the Multiplexer and every track: save with metadata, load safely.

A checkpoint is one ``torch.save`` dict::

    {"format": "seqmux", "version": 1, "kind": <what model>, "meta": {...}, "state": {...}}

``state`` holds the tensors (a ``state_dict``, or ``{name: state_dict}`` for several models),
``meta`` what is needed to rebuild the model (sizes, names, scaling): plain Python values only, so
every file loads with ``torch.load(weights_only=True)`` (no pickled code runs). The file is written
atomically through a buffer (the same weights give the same bytes). Loading a missing file, a file
that is not a PyTorch file, or another kind of model raises one ``InputError`` naming the file.
"""

import io
from pathlib import Path

import torch

from .errors import InputError
from .outputs import atomic_path

FORMAT = "seqmux"
VERSION = 1


def cpu_state(state):
    """A ``state_dict`` (or a nested dict of them) with every tensor detached and on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return state


def save(path, kind, state, **meta):
    """Write a checkpoint of model ``kind`` (e.g. ``"sgrna"``, ``"multiplexer"``) to ``path``.

    ``state``: a ``state_dict``, a module (its ``state_dict`` is taken) or a dict of them;
    ``meta``: keyword arguments of plain values (numbers, strings, lists, dicts)."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    elif isinstance(state, dict):
        state = {k: v.state_dict() if isinstance(v, torch.nn.Module) else v for k, v in state.items()}
    blob = {"format": FORMAT, "version": VERSION, "kind": str(kind), "meta": meta, "state": cpu_state(state)}
    buf = io.BytesIO()
    torch.save(blob, buf)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def load(path, kind, field="model"):
    """``(state, meta)`` of a checkpoint of model ``kind``; tensors on the CPU.

    ``field``: the config key or option that named the file, for the message. InputError (one line)
    when the file is missing, is not a PyTorch file, is not a seqmux checkpoint, or holds another
    kind of model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "model file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not its own
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(path, field, str(path), f"not a PyTorch model file ({type(err).__name__}: {first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state" not in blob:
        raise InputError(path, field, str(path), f"not a seqmux {kind} model file (no '{FORMAT}' checkpoint)")
    if blob.get("kind") != kind:
        raise InputError(path, field, str(path), f"holds a {blob.get('kind')!r} model, not a {kind!r} model")
    if int(blob.get("version", 0)) > VERSION:
        raise InputError(path, field, str(path), f"checkpoint version {blob['version']} is newer than this "
                                                 f"seqmux reads ({VERSION})")
    return blob["state"], dict(blob.get("meta") or {})


def kind_of(path):
    """The model kind a checkpoint file holds, or None (no such file, not a checkpoint): to name a
    file given in the wrong place in an error message."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return blob.get("kind") if isinstance(blob, dict) and blob.get("format") == FORMAT else None


def load_into(module, state, path, kind, field="model"):
    """``module.load_state_dict(state)``, an InputError naming the file when the shapes or keys
    differ (a file of the right kind written with other sizes). Returns ``module`` in eval mode."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(path, field, str(path), f"the {kind} weights do not fit the model ({first})") from None
    return module.eval()
