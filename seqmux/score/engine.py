"""Scoring engines: what turns one window into the effects of its substitutions.

``ExactScorer``: exact ISM of the base model (``seqmux.ism.window_effects``: fast incremental ISM,
naive forward passes for models it cannot analyse); it also scores indels and MNVs as pairs of
windows (``pairs``: the base model on the reference and on the alternative window). ``MultiplexerScorer``:
the trained Multiplexer, every effect of a window in one forward pass, a batch of windows at a
time, each window's ``[F, 4, L]`` reduced to the kept values on the device before the next batch.
Both have ``windows(items)`` (``[(tokens, offsets, alts)] -> [[M, F]]``) and ``full_map(tokens)``
(``[F, 4, L]``); ``seqmux.score.strand.BothStrands`` wraps either for ``strand: both``. The
``seqmux predict`` command and the workflow's ``score`` stage use these classes.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from ..encoding import one_hot
from ..errors import InputError
from ..ism import check_outputs, effect, effect_of_logits, logit_model, one_cpu_thread, window_effects, window_targets
from ..variants import substitutions

log = logging.getLogger(__name__)

# config field names (used by models.py) -> the command-line options that set them
CLI_FIELDS = {"base_model.weights": "--weights", "base_model.module": "--modelpath", "base_model.class": "--modelname",
              "base_model.names": "--names", "base_model.kind": "--model-kind", "windows.length": "--length",
              "multiplexer": "--multiplexer"}


class ExactScorer:
    """Exact ISM of a base model (``window_effects``: fast incremental ISM, naive forward passes
    for models it cannot analyse)."""

    def __init__(self, model, mode, batch_size, device, source=("base model", "--weights", None)):
        self.model, self.mode, self.batch_size, self.device = model.to(device).eval(), mode, batch_size, device
        self.source = source  # (file, option, value) naming the model in an error

    def __call__(self, tokens, offsets, alts):
        """Effects ``[M, F]`` float32 of the substitutions ``(offsets, alts)`` of one window."""
        return window_effects(self.model, tokens, offsets, alts, self.mode, "fast", self.batch_size, self.device)

    def windows(self, items):
        """Effects ``[M, F]`` of each ``(tokens [L], offsets [M], alts [M])``."""
        return [self(t, np.asarray(o, np.int64), np.asarray(a, np.int64)) for t, o, a in items]

    def full_map(self, tokens):
        """``[F, 4, L]`` of every substitution of a window (0 at the reference base)."""
        offsets, alts = substitutions(tokens)
        return window_targets(self.model, tokens, offsets, alts, self.mode, "fast", self.batch_size, self.device)[1]

    @torch.no_grad()
    def pairs(self, ref_tokens, alt_tokens):
        """Effects ``[N, F]`` of alternative windows ``[N, L]`` against reference windows ``[N, L]``:
        the base model's outputs on each, as the ISM targets (from logits when it ends in a sigmoid)."""
        ref_tokens, alt_tokens = np.asarray(ref_tokens), np.asarray(alt_tokens)
        if not len(ref_tokens):
            return np.zeros((0, 0), np.float32)
        head = logit_model(self.model, ref_tokens.shape[-1])
        net = self.model if head is None else head
        dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        out, step = [], max(1, self.batch_size // 2)
        for i in range(0, len(ref_tokens), step):
            n = len(ref_tokens[i:i + step])
            x = torch.from_numpy(one_hot(np.concatenate([ref_tokens[i:i + step], alt_tokens[i:i + step]])))
            z = net(x.to(self.device, dtype))
            check_outputs(z, self.mode, head is not None, "on an indel's window")
            with one_cpu_thread(z.device):
                e = effect(z[n:], z[:n], self.mode) if head is None else effect_of_logits(z[n:], z[:n], self.mode)
            out.append(e.float().cpu().numpy())
        return np.concatenate(out)


class MultiplexerScorer:
    """The trained multiplexer: every effect of a window in one forward pass, ``window_batch``
    windows a pass."""

    def __init__(self, model, device, window_batch=8):
        self.model, self.device, self.window_batch = model.to(device).eval(), device, max(1, int(window_batch))

    def __call__(self, tokens, offsets, alts):
        return self.windows([(tokens, offsets, alts)])[0]

    @torch.no_grad()
    def windows(self, items):
        """Effects ``[M, F]`` of each ``(tokens [L], offsets [M], alts [M])``, ``window_batch`` windows a
        pass: the trunk on each whole window, the head on the wanted columns only (``forward(x,
        positions)``: each window's distinct offsets, padded to one count with offset 0), and the kept
        ``(column, base)`` values gathered on the device."""
        out = []
        for i in range(0, len(items), self.window_batch):
            chunk = items[i:i + self.window_batch]
            counts = [len(o) for _, o, _ in chunk]
            columns = [np.unique(np.asarray(o, np.int64), return_inverse=True) for _, o, _ in chunk]
            positions = np.zeros((len(chunk), max(1, max(len(u) for u, _ in columns))), np.int64)
            rows, cols, bases = [], [], []
            for b, ((_, _, alts), (unique, inverse)) in enumerate(zip(chunk, columns)):
                positions[b, :len(unique)] = unique
                rows.append(np.full(len(inverse), b))
                cols.append(inverse.ravel())
                bases.append(np.asarray(alts))
            x = torch.from_numpy(one_hot(np.stack([t for t, _, _ in chunk]))).to(self.device)
            maps = self.model(x, torch.from_numpy(positions).to(self.device))  # [B, F, 4, P]
            index = [torch.from_numpy(np.concatenate(a).astype(np.int64)).to(self.device) for a in (rows, bases, cols)]
            kept = maps[index[0], :, index[1], index[2]].float().cpu().numpy()  # [sum M, F]
            del maps
            out += np.split(kept, np.cumsum(counts)[:-1])
        return out

    @torch.no_grad()
    def full_map(self, tokens):
        x = torch.from_numpy(one_hot(tokens)).to(self.device)[None]
        return self.model(x)[0].float().cpu().numpy()


def _cli_error(err):
    """The same InputError with config field names replaced by the options that set them."""
    source = "command line" if err.source == "config" else err.source
    return InputError(source, CLI_FIELDS.get(err.field, err.field), err.value, err.problem)


def exact_scorer(kind, weights, modelpath, modelname, names, length, mode, batch_size, device):
    """``(scorer, names, length)`` for exact ISM of the base model given on the command line."""
    from ..models import BELUGA, build_base_model, count_outputs, output_names

    if kind in ("beluga", "demo") and not weights:
        raise InputError("command line", "--weights", weights, f"the {kind} base model needs a weights file")
    try:
        try:
            model = build_base_model(kind, weights, modelpath, modelname, length)
        except InputError:
            raise
        except Exception as err:  # e.g. a Beluga state dict given as the demo model file
            raise InputError(weights, "--weights", weights, f"cannot load it as a {kind} model: "
                             f"{type(err).__name__}: {err}".splitlines()[0]) from None
        model_length = getattr(model, "length", None) or (BELUGA["length"] if kind == "beluga" else None)
        if length is None:
            if model_length is None:
                raise InputError("command line", "--length", None,
                                 f"{modelname or kind} has no length attribute: give the window length")
            length = int(model_length)
        elif model_length is not None and int(model_length) != length:
            raise InputError("command line", "--length", length, f"the base model takes {model_length} bp windows")
        if kind == "demo" and not names and weights:
            beside = Path(weights).with_name("output_names.txt")
            names = str(beside) if beside.is_file() else ""
        try:
            n_outputs = count_outputs(model, length)
        except InputError:
            raise
        except Exception as err:
            raise InputError("command line", "--length", length,
                             f"the base model fails on a window of this length: {err}".splitlines()[0]) from None
        names = output_names(kind, names, n_outputs)
    except InputError as err:
        raise _cli_error(err) from None
    source = (modelpath, "--modelname", modelname) if kind == "custom" else (weights, "--weights", weights)
    return ExactScorer(model, mode, batch_size, device, source), names, length


def multiplexer_scorer(path, names, length, mode, device, window_batch=8):
    """``(scorer, names, length)`` for a trained multiplexer file."""
    if not Path(path).is_file():
        raise InputError(path, "--multiplexer", str(path),
                         "multiplexer model not found (train one with the workflow, or use --exact)")
    try:
        from ..multiplexer import load_multiplexer
    except ImportError as err:
        raise InputError(path, "--multiplexer", str(path),
                         f"this installation cannot load multiplexers ({err}); use --exact") from None
    try:
        model, info = load_multiplexer(path)
    except InputError as err:
        raise _cli_error(err) from None
    if info["mode"] != mode:
        flag = "with --diff" if info["mode"] == "diff" else "without --diff"
        raise InputError(path, "--multiplexer", str(path),
                         f"the multiplexer predicts {info['mode']} effects, not {mode}: run {flag} or use --exact")
    if length is not None and length != int(info["length"]):
        raise InputError("command line", "--length", length, f"the multiplexer takes {info['length']} bp windows")
    if names:
        from ..models import output_names

        try:
            names = output_names("custom", names, len(info["output_names"]))
        except InputError as err:
            raise _cli_error(InputError(err.source, err.field, err.value,
                                        err.problem.replace("the base model", "the multiplexer"))) from None
    else:
        names = list(info["output_names"])
    return MultiplexerScorer(model, device, window_batch), names, int(info["length"])


