"""Base models: the Beluga family (published layout), the demo model, weights and custom classes.

Every base model maps one-hot DNA ``[B, 4, L]`` (A,G,C,T) to sigmoid outputs ``[B, F]``.
"""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .errors import InputError
from .outputs import atomic_path
from .motifs import crop_or_pad, log_odds, reverse_complement

log = logging.getLogger(__name__)

BELUGA = dict(length=2000, channels=(320, 480, 640), kernel=8, pool=4, hidden=2003, n_outputs=2002)


class Flatten(nn.Module):
    """``[B, C, 1, P] -> [B, C * P]`` (channel-major, as the published Lambda did)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)


def conv_output_length(length, kernel, pool):
    """Positions left after Beluga's three blocks (two valid convs each, pools after two)."""
    for block in range(3):
        length = length - 2 * (kernel - 1)
        if block < 2:
            length //= pool
    return length


class BelugaFamily(nn.Module):
    """DeepSEA Beluga's architecture with free sizes; ``BelugaFamily(**BELUGA)`` has exactly the
    published ``state_dict`` keys and shapes (``model.0.0.weight`` ... ``model.1.4.1.bias``).

    Input ``[B, 4, L]`` one-hot A,G,C,T; output ``[B, F]`` sigmoid probabilities.
    """

    def __init__(self, length=2000, channels=(320, 480, 640), kernel=8, pool=4, hidden=2003, n_outputs=2002):
        super().__init__()
        c1, c2, c3 = channels
        width = conv_output_length(length, kernel, pool)
        if width < 1:
            raise ValueError(f"window of {length} bp is too short for kernel {kernel} and pool {pool}")
        self.length, self.n_outputs = length, n_outputs
        self.sizes = dict(channels=tuple(channels), kernel=kernel, pool=pool, hidden=hidden)
        k = (1, kernel)
        convs = nn.Sequential(
            nn.Conv2d(4, c1, k), nn.ReLU(), nn.Conv2d(c1, c1, k), nn.ReLU(), nn.Dropout(0.2),
            nn.MaxPool2d((1, pool), (1, pool)),
            nn.Conv2d(c1, c2, k), nn.ReLU(), nn.Conv2d(c2, c2, k), nn.ReLU(), nn.Dropout(0.2),
            nn.MaxPool2d((1, pool), (1, pool)),
            nn.Conv2d(c2, c3, k), nn.ReLU(), nn.Conv2d(c3, c3, k), nn.ReLU(),
        )
        dense = nn.Sequential(
            nn.Dropout(0.5), Flatten(),
            nn.Sequential(nn.Identity(), nn.Linear(c3 * width, hidden)), nn.ReLU(),
            nn.Sequential(nn.Identity(), nn.Linear(hidden, n_outputs)),
        )
        self.model = nn.Sequential(convs, dense, nn.Sigmoid())

    def forward(self, x):
        return self.model(x.unsqueeze(2))


def load_state_dict_checked(model, path, field="base_model.weights"):
    """Load a ``state_dict`` file into ``model``; InputError listing missing, unexpected and
    mis-shaped keys when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, field, str(path), f"cannot read weights: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, field, str(path), "file does not hold a state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shaped = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(state)
                    if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shaped:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{name} keys: {', '.join(keys[:5])}{more}")
        raise InputError(path, field, str(path), "weights do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def load_custom_class(module_path, class_name):
    """The class ``class_name`` from a user's ``.py`` file."""
    module_path = Path(module_path)
    if not module_path.is_file():
        raise InputError(module_path, "base_model.module", str(module_path), "module file not found")
    spec = importlib.util.spec_from_file_location(f"seqmux_custom_{module_path.stem}", module_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise InputError(module_path, "base_model.module", str(module_path),
                         f"import failed: {type(err).__name__}: {err}".splitlines()[0]) from None
    cls = getattr(module, class_name, None) if class_name else None
    if not isinstance(cls, type):
        raise InputError(module_path, "base_model.class", class_name, "no such class in the module")
    return cls


def check_model_length(kind, length, field="windows.length"):
    """InputError unless the built-in base model ``kind`` takes windows of ``length`` (custom
    models: known only once built)."""
    if kind == "beluga" and length not in (None, BELUGA["length"]):
        raise InputError("config", field, length, f"the beluga base model needs {BELUGA['length']}")
    if kind == "demo" and length is not None and conv_output_length(length, 8, 4) < 1:
        shortest = next(n for n in range(length, 100_000) if conv_output_length(n, 8, 4) >= 1)
        raise InputError("config", field, length, f"the demo base model needs at least {shortest} bp")


def build_base_model(kind, weights="", module="", class_name="", length=None, output=None):
    """The base model of the config, in eval mode on the CPU.

    ``beluga``: the published architecture, weights from ``weights``. ``custom``: ``class_name``
    from the file ``module``, constructed with no arguments, weights from ``weights`` if given.
    ``demo``: a ``BelugaFamily`` saved whole (``save_model``) by the demo rule. ``output``
    (``base_model.output``; ``None`` or ``""``: unset): the head of a custom model that returns a
    tuple or dict of outputs, an index or a name (``seqmux.ism.output_key``); the model returned
    then gives that head alone.
    """
    if kind == "beluga":
        check_model_length(kind, length)
        model = load_state_dict_checked(BelugaFamily(**BELUGA), weights)
    elif kind == "custom":
        cls = load_custom_class(module, class_name)
        try:
            model = cls()
        except Exception as err:
            raise InputError(module, "base_model.class", class_name,
                             f"constructing it with no arguments failed: {err}".splitlines()[0]) from None
        if weights:
            load_state_dict_checked(model, weights)
        if output not in (None, ""):
            from .ism import Bound

            model = Bound(model, output=output)
    elif kind == "demo":
        model = load_model(weights)
    else:
        raise InputError("config", "base_model.kind", kind, "expected demo, beluga or custom")
    return model.eval()


BASE_KIND = "base_model"


def save_model(model, path):
    """Save a ``BelugaFamily`` with its constructor arguments (one ``seqmux.checkpoint`` file, kind
    ``base_model``)."""
    checkpoint.save(path, BASE_KIND, model, config=dict(length=model.length, n_outputs=model.n_outputs,
                                                        **model.sizes))


def load_model(path):
    """A ``BelugaFamily`` written by ``save_model`` (eval mode); one-line InputError on a missing
    file, another kind of file (a Multiplexer's ``model.pt`` says so) or weights that do not fit."""
    path = Path(path)
    try:
        state, meta = checkpoint.load(path, BASE_KIND, field="base_model.weights")
    except InputError:
        if checkpoint.kind_of(path) == "multiplexer":
            raise InputError(path, "base_model.weights", str(path), "the file holds a multiplexer, not a base "
                             "model (give it to --multiplexer, without --exact)") from None
        raise
    cfg = dict(meta.get("config") or {})
    if "channels" not in cfg:
        raise InputError(path, "base_model.weights", str(path), "not a demo base model (no channels in its config)")
    cfg["channels"] = tuple(cfg["channels"])
    return checkpoint.load_into(BelugaFamily(**cfg), state, path, BASE_KIND, field="base_model.weights")


DEMO_DOWNSTREAM = ("random", "structured")


def build_demo_model(motifs, length, n_outputs, seed, channels=(24, 32, 32), hidden=64, kernel=8, pool=4,
                     calibration_sequences=None, threshold=0.6, downstream="random", active=0.8, noise=0.05,
                     logit_std=1.0):
    """A small Beluga-family network whose first-layer filters are JASPAR log-odds PWMs.

    Filters ``2i`` and ``2i+1`` of the first layer are motif ``i`` and its reverse complement
    (cropped to the ``kernel`` most informative columns), with a bias of ``-threshold`` times the
    best score so that only good matches pass the ReLU; the second conv passes them through
    (identity centre tap plus noise). ``downstream`` sets the later layers (seeded):

    - ``random``: random (He) convolutions and dense layers with zero biases. The effect of a motif
      site on an output then depends mostly on the rest of the window (the sign and size of a
      site's contribution pass through four random ReLU convolutions and max-pools), unlike a
      trained network, in which a motif drives its outputs the same way wherever it sits.
    - ``structured``: convolutions 3-6 carry every motif channel forward (a box filter on the
      channel itself plus ``noise`` times a random mixing; extra channels are sparse positive
      mixtures of motif channels), so the features that reach the dense layers say "motif k in
      region j"; the first dense layer is random with biases that leave a fraction ``active`` of
      its units on over the calibration windows; the output layer is random. A motif then moves
      each output in a consistent direction, by an amount set by its region, as in a trained
      model; context still matters through the dense layer's ReLUs and the pools.

    Output logits are shifted and scaled on ``calibration_sequences`` (one-hot ``[N, 4, L]``) to a
    mean of -1 and a standard deviation of ``logit_std``, so that the sigmoid is not saturated.
    float32 rounding in the logits grows with that scale (at 2, fast and naive ISM of the default
    model differed by up to 1.2e-5 of log-fold; at 1, half that).
    """
    if downstream not in DEMO_DOWNSTREAM:
        raise InputError("config", "base_model.demo.downstream", downstream, f"expected one of {DEMO_DOWNSTREAM}")
    c1 = channels[0]
    if c1 < 2 * len(motifs):
        raise ValueError(f"first layer has {c1} channels, fewer than 2 x {len(motifs)} motifs")
    gen = torch.Generator().manual_seed(int(seed))
    model = BelugaFamily(length, channels, kernel, pool, hidden, n_outputs).eval()
    convs, dense = model.model[0], model.model[1]
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * np.sqrt(2.0 / fan_in))
                layer.bias.zero_()
        first = convs[0]
        first.weight.zero_()
        first.bias.fill_(-1.0)
        for i, motif in enumerate(motifs):
            fwd = crop_or_pad(log_odds(motif.counts), kernel)
            for j, mat in enumerate((fwd, reverse_complement(fwd))):
                first.weight[2 * i + j, :, 0, :] = torch.from_numpy(mat.astype(np.float32))
                first.bias[2 * i + j] = -threshold * float(mat.max(axis=0).sum())
        # second conv: pass each motif channel through, plus a little mixing
        second = convs[2]
        second.weight.mul_(0.1)
        for c in range(c1):
            second.weight[c, c, 0, kernel // 2] += 1.0
        if downstream == "structured":
            for idx in (6, 8, 12, 14):
                conv = convs[idx]
                c_out, c_in = conv.weight.shape[:2]
                w = torch.randn(conv.weight.shape, generator=gen) * noise * np.sqrt(2.0 / conv.weight[0].numel())
                for c in range(min(c_in, c_out)):
                    w[c, c, 0, :] += 1.0 / kernel
                for c in range(min(c_in, c_out), c_out):
                    mix = torch.rand(c_in, generator=gen) * (torch.rand(c_in, generator=gen) < 0.2)
                    w[c, :, 0, :] += mix[:, None] / kernel
                conv.weight.copy_(w)
            if calibration_sequences is not None:
                pre = dense[:3](convs(torch.as_tensor(calibration_sequences).unsqueeze(2)))
                dense[2][1].bias.sub_(torch.quantile(pre, 1 - active, dim=0))
        if calibration_sequences is not None:
            x = torch.as_tensor(calibration_sequences)
            hidden_out = dense[:4](convs(x.unsqueeze(2)))
            logits = dense[4](hidden_out)
            mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
            head = dense[4][1]
            head.weight.mul_((logit_std / std)[:, None])
            head.bias.copy_((head.bias - mean) * logit_std / std - 1.0)
    return model.eval()


def default_output_names(kind, n_outputs):
    """Output names when the config gives no names file: Beluga's 2,002 published names for
    ``beluga``, else ``output_0 ... output_{F-1}``."""
    if kind == "beluga":
        from importlib.resources import files

        return files("seqmux").joinpath("data/beluga_targets.txt").read_text().splitlines()
    return [f"output_{i}" for i in range(n_outputs)]


def output_names(kind, names_path, n_outputs):
    """The ``n_outputs`` output names of the base model (file of one name per line, or defaults)."""
    if not names_path:
        names = default_output_names(kind, n_outputs)
    else:
        if not Path(names_path).is_file():
            raise InputError(names_path, "base_model.names", str(names_path), "names file not found")
        names = [line.rstrip("\n") for line in open(names_path) if line.strip()]
    if len(names) != n_outputs:
        raise InputError(names_path or kind, "base_model.names", f"{len(names)} names",
                         f"the base model has {n_outputs} outputs")
    return names


def count_outputs(model, length):
    """F of a model: its output width on one all-N window of ``length``. InputError for a model
    that returns several outputs (a tuple or dict) unless ``base_model.output`` picked one."""
    from .ism import Bound, OutputSelectionError, output_key

    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 4, length))
        key = output_key(out)
    except OutputSelectionError as err:
        chosen = model.output if isinstance(model, Bound) else ""
        raise InputError("base_model", "base_model.output", chosen, str(err)) from None
    out = out if key is None else out[key]
    if out.ndim != 2:
        raise InputError("base_model", "output shape", tuple(out.shape), "expected [batch, F]")
    return out.shape[1]


def write_demo_model(fasta, motifs_json, out_model, out_names, length, n_outputs, seed, channels, hidden,
                     n_calibration=64, downstream="random", logit_std=1.0):
    """Stage: build the demo base model on the demo genome's motifs and save it with its names."""
    from .encoding import one_hot, tokenize
    from .genome import chromosome_lengths, open_fasta
    from .motifs import read_motifs

    motifs = read_motifs(motifs_json)
    genome = open_fasta(fasta)
    lengths = chromosome_lengths(genome)
    rng = np.random.default_rng([seed, 202])
    names = [name for name, n in lengths.items() if n > length]
    if not names:
        raise InputError(fasta, "windows.length", length, "longer than every chromosome of the demo genome")
    seqs = []
    for _ in range(n_calibration):
        chrom = names[int(rng.integers(len(names)))]
        start = int(rng.integers(0, lengths[chrom] - length))
        seqs.append(tokenize(genome[chrom][start:start + length]))
    model = build_demo_model(motifs, length, n_outputs, seed, tuple(channels), hidden,
                             calibration_sequences=one_hot(np.stack(seqs)), downstream=downstream,
                             logit_std=logit_std)
    with atomic_path(out_model) as tmp_model, atomic_path(out_names) as tmp_names:  # both whole, or neither
        save_model(model, tmp_model)
        with open(tmp_names, "w") as fh:
            for i in range(n_outputs):
                fh.write(f"demo_{i:02d}\n")
