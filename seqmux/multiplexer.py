"""The Multiplexer: every single-nucleotide substitution effect of a base model in one forward pass.

Input one-hot ``[B, 4, L]`` (A,G,C,T; N all zeros); output ``[B, F, 4, L]`` where ``[b, f, a, p]``
is the predicted effect on base-model output ``f`` of putting base ``a`` at position ``p`` (the same
layout as the split targets, see ``seqmux.splits``).

Architecture (a generalisation of the published BelugaMultiplexer to any ``L`` and ``F``):

- a fifth input channel, the positional ramp ``min(p, L - p) / (L / 2)``: for ``L = 2000`` this is
  exactly the published 0, 0.001, ..., 0.999 over the first 1000 positions and 1.0, 0.999, ...,
  0.001 over the last 1000. It is a non-persistent buffer (no ``state_dict`` key).
- blocks ``model_one``, ``model_two``, ...: ``Conv1d(k) -> BatchNorm1d -> ReLU -> Conv1d(k) ->
  BatchNorm1d -> ReLU`` (``state_dict`` indices 0, 1, 3, 4; the ReLUs at 2 and 5 hold no
  parameters). Both convolutions of block ``i`` use dilation ``dilations[i]``; each keeps the length
  ``L`` with PyTorch's ``padding="same"``, which for an even kernel puts the odd extra pad on the
  right (kernel 8, dilation 1: 3 left, 4 right; dilation d: ``7d // 2`` left, the rest right).
- skip connections: a block whose input and output widths are equal is residual,
  ``out = block(x) + x``; a block that changes width (the first two of the published layout,
  5 -> 640 and 640 -> 1280) is plain ``out = block(x)``.
- head ``model_final``: ``Conv1d(width, H, 1) -> BatchNorm1d -> ReLU -> Conv1d(H, 4F, 1)`` with
  ``H = 4F`` by default (as published); its ``4F`` channels are channel ``4 f + a`` and are
  reshaped to ``[B, F, 4, L]``.
- ``mask_reference`` (default on, no parameters): the prediction for the identity substitution
  (the reference base at each position) is set to exactly 0, which is its exact target.
- ``output_scale`` (default 1, no parameters): the head's output is multiplied by it. Training sets
  it to the RMS of the training targets, so the network works at unit scale whatever the base model
  and target mode (log-fold changes of ~0.1, ``diff`` values of ~1e-3): Adam's steps are of a fixed
  size in parameter space, hence in the output's units without it.

Two options of the demo preset, off in the published layout, each adding parameters but (almost) no
multiply-adds:

- ``position_embedding``: a learned ``[widths[0], L]`` map (``state_dict`` key
  ``position_embedding``) added to the first block's output: each position gets its own bias, as
  the base model's dense layer gives each position its own weights (the ramp alone tells only
  the distance from the centre).
- ``global_context``: the head's input gets ``Linear(mean over positions of the last block)``
  added at every position (``model_context``: ``width x width`` multiply-adds a window): the
  effect of a substitution depends on the whole window through the base model's saturating
  outputs, which a stack of local convolutions sees only near its receptive field's limit.

``trunk`` (demo preset; ``unet`` by default, ``dilated`` the published trunk above): ``unet``
keeps the blocks (``model_one`` ...) but runs block ``i`` at resolution ``pool**i`` (a max-pool of
``pool``, ceil mode, before each block after the first), then comes back up: level ``i`` gets level
``i + 1`` upsampled (each value repeated ``pool`` times, cut to the level's length), concatenated to
its own block's output, through one ``Conv1d(k) -> BatchNorm1d -> ReLU`` (``model_up_<i>``), so
``widths[0]`` channels reach the head at full resolution. Like the base model's pools, the coarse
levels see the whole window for a fraction of the multiply-adds (the demo's 4 levels of pool 4:
about half of the 5 full-resolution dilated blocks'), while the full-resolution level keeps every
base's own features.

``head`` (demo preset; ``conv``, the published head, when not given): ``difference`` keeps the
1x1 head's layers and reads its ``4F`` channels as a value ``v[f, a, p]`` of each base, the effect
being ``v[f, alt, p] - v[f, ref, p]`` (no parameter or multiply-add more; the three substitutions of
a base share ``v[f, ref, p]``; at an N, ``v`` itself); its config carries ``head``. ``bilinear`` and
``relu`` replace the 1x1 head by one built like the base model's dense part
(``Multiplexer.factored_head``): per position ``K`` values a base, per window a gate (``bilinear``)
or ``K`` hidden pre-activations (``relu``) from the trunk's mean and max over positions. Their
config carries ``head`` and ``rank``; the ``conv`` head's config is unchanged.

``PRESETS["beluga"]`` with ``n_outputs = 2002`` has exactly the published ``state_dict`` keys and
shapes (202,273,376 parameters), so the published weights load with ``load_published``; the
published dilations are not recorded in the state dict, ours are ``1, 1, 2, 4, 8, 16``.
"""

import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, seeding
from .errors import InputError

log = logging.getLogger(__name__)

KIND = "multiplexer"  # the model kind of its ``seqmux.checkpoint`` files
TRACK = "multiplexer"  # its ``seqmux.seeding`` track

BLOCK_NAMES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]

PRESETS = {
    # the published BelugaMultiplexer (F = 2002, L = 2000)
    "beluga": dict(widths=[640, 1280, 1280, 1280, 1280, 1280], dilations=[1, 1, 2, 4, 8, 16], kernel=8,
                   head_hidden=0),
    # sized for a CPU: the embedded demo (L = 400, F = 16)
    "demo": dict(widths=[64, 64, 64, 64], dilations=[1, 1, 1, 1], kernel=8, head_hidden=256,
                 ramp="tent", position_embedding=False, global_context=False, head="conv", rank=64,
                 trunk="unet", pool=4),
}
# the demo preset's widths and dilations when the config leaves them empty: by trunk (dilated: the
# published trunk's five blocks, sized for the demo)
TRUNK_SIZES = {"unet": dict(widths=[64, 64, 64, 64], dilations=[1, 1, 1, 1]),
               "dilated": dict(widths=[64, 64, 64, 64, 64], dilations=[1, 2, 4, 8, 16])}

TRUNKS = ("dilated", "unet")

HEADS = ("conv", "difference", "bilinear", "relu")
CONV_HEADS = ("conv", "difference")  # the published layers (``model_final``); difference: v[alt] - v[ref]


def block_name(i):
    """``model_one`` ... ``model_twelve``, then ``model_13`` ..."""
    return f"model_{BLOCK_NAMES[i]}" if i < len(BLOCK_NAMES) else f"model_{i + 1}"


RAMPS = ("tent", "linear")


def positional_ramp(length, kind="tent"):
    """``[L]`` float32. ``tent`` (published): ``min(p, L - p) / (L / 2)``, 0 at the ends and 1 at
    the centre. ``linear``: ``p / (L - 1)``, 0 to 1 (tells the two halves of the window apart)."""
    p = torch.arange(length, dtype=torch.float64)
    if kind == "tent":
        return (torch.minimum(p, length - p) / (length / 2)).float()
    if kind == "linear":
        return (p / max(length - 1, 1)).float()
    raise ValueError(f"unknown ramp {kind!r}, expected one of {RAMPS}")


class SameConv1d(nn.Conv1d):
    """``Conv1d`` that keeps the length: ``(k - 1) * d`` zeros in all, ``// 2`` of them on the left
    and the rest on the right (what ``padding="same"`` does, without its even-kernel warning). Same
    parameters and ``state_dict`` keys as ``nn.Conv1d``."""

    def __init__(self, c_in, c_out, kernel, dilation=1):
        super().__init__(c_in, c_out, kernel, dilation=dilation)
        total = (kernel - 1) * dilation
        self.pad = (total // 2, total - total // 2)

    def forward(self, x):
        return super().forward(nn.functional.pad(x, self.pad))


def conv_block(c_in, c_out, kernel, dilation):
    return nn.Sequential(
        SameConv1d(c_in, c_out, kernel, dilation), nn.BatchNorm1d(c_out), nn.ReLU(),
        SameConv1d(c_out, c_out, kernel, dilation), nn.BatchNorm1d(c_out), nn.ReLU(),
    )


class Multiplexer(nn.Module):
    """One forward pass: one-hot ``[B, 4, L]`` -> substitution effects ``[B, F, 4, L]``."""

    def __init__(self, length, n_outputs, widths, dilations=None, kernel=8, head_hidden=0, ramp="tent",
                 mask_reference=True, output_scale=1.0, position_embedding=False, global_context=False,
                 head="conv", rank=64, trunk="dilated", pool=4):
        super().__init__()
        widths = [int(w) for w in widths]
        dilations = [int(d) for d in (dilations or [1] * len(widths))]
        if not widths or len(dilations) != len(widths):
            raise ValueError(f"need one dilation per block: widths {widths}, dilations {dilations}")
        self.length, self.n_outputs = int(length), int(n_outputs)
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}, expected one of {HEADS}")
        head_hidden = int(head_hidden) or 4 * self.n_outputs
        self.sizes = dict(widths=widths, dilations=dilations, kernel=int(kernel), head_hidden=head_hidden,
                          ramp=ramp, mask_reference=bool(mask_reference), output_scale=float(output_scale),
                          position_embedding=bool(position_embedding), global_context=bool(global_context))
        if head == "difference":
            self.sizes.update(head=head)
        elif head != "conv":  # absent for the published head, so that its config (and file) stays as before
            self.sizes.update(head=head, rank=int(rank))
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}, expected one of {TRUNKS}")
        if trunk != "dilated":  # absent for the published trunk, likewise
            self.sizes.update(trunk=trunk, pool=int(pool))
        self.register_buffer("ramp", positional_ramp(self.length, ramp), persistent=False)
        c_in = 5
        self.residual = []
        self.block_names = []
        for i, (w, d) in enumerate(zip(widths, dilations)):
            name = block_name(i)
            setattr(self, name, conv_block(c_in, w, kernel, d))
            self.block_names.append(name)
            self.residual.append(c_in == w)
            c_in = w
        if trunk == "unet":  # decoder: level i gets level i + 1 upsampled, one convolution
            self.up_names = []
            for i in reversed(range(len(widths) - 1)):
                name = block_name(i).replace("model_", "model_up_", 1)
                setattr(self, name, nn.Sequential(SameConv1d(widths[i] + c_in, widths[i], kernel, 1),
                                                  nn.BatchNorm1d(widths[i]), nn.ReLU()))
                self.up_names.append(name)
                c_in = widths[i]
        if head in CONV_HEADS:
            self.model_final = nn.Sequential(
                nn.Conv1d(c_in, head_hidden, 1), nn.BatchNorm1d(head_hidden), nn.ReLU(),
                nn.Conv1d(head_hidden, 4 * self.n_outputs, 1),
            )
        else:
            k = int(rank)
            # per position: K values for each of the 4 bases (the change of K hidden units)
            self.head_local = nn.Conv1d(c_in, 4 * k, 1)
            # per window, from the mean and max of the trunk's features over the positions:
            # bilinear: a gate [F, K]; relu: K hidden pre-activations (the weights [F, K] are global)
            n_window = self.n_outputs * k if head == "bilinear" else k
            self.head_window = nn.Sequential(nn.Linear(2 * c_in, c_in), nn.ReLU(), nn.Linear(c_in, n_window))
            if head == "relu":
                self.head_weight = nn.Parameter(torch.randn(self.n_outputs, k) / k ** 0.5)
        # zero at the start (and made after every published layer, so that the random start of
        # those is the same with and without them): the untrained network is the published one
        if position_embedding:
            self.position_embedding = nn.Parameter(torch.zeros(2, c_in, self.length))
        if global_context:
            self.model_context = nn.Linear(c_in, 2 * c_in)
            nn.init.zeros_(self.model_context.weight)
            nn.init.zeros_(self.model_context.bias)

    def config(self):
        """Constructor arguments (``Multiplexer(**m.config())`` rebuilds the architecture)."""
        return dict(length=self.length, n_outputs=self.n_outputs, **self.sizes)

    def trunk(self, x):
        """Per-position features ``[B, C, L]`` of one-hot ``[B, 4, L]``: the blocks, the position
        embedding and the global context (everything before the head)."""
        if x.shape[-1] != self.length:
            raise ValueError(f"input of length {x.shape[-1]}, the multiplexer was built for {self.length}")
        h = torch.cat([x, self.ramp.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        unet = self.sizes.get("trunk", "dilated") == "unet"
        skips = []
        for i, (name, residual) in enumerate(zip(self.block_names, self.residual)):
            if unet and i:
                h = nn.functional.max_pool1d(h, self.sizes["pool"], ceil_mode=True)
            out = getattr(self, name)(h)
            h = out + h if residual else out
            skips.append(h)
        if unet:
            for name, skip in zip(self.up_names, reversed(skips[:-1])):
                up = h.repeat_interleave(self.sizes["pool"], dim=2)[..., :skip.shape[-1]]
                h = getattr(self, name)(torch.cat([skip, up], dim=1))
        if self.sizes["position_embedding"]:  # a gain and a bias per channel and position
            gain, bias = self.position_embedding.to(h.dtype)
            h = h * (1 + gain) + bias
        if self.sizes["global_context"]:  # a gain and a bias per channel from the window's mean
            gain, bias = self.model_context(h.mean(dim=2)).to(h.dtype).unsqueeze(2).chunk(2, dim=1)
            h = h * (1 + gain) + bias
        return h

    def forward(self, x, positions=None):
        """Effects ``[B, F, 4, L]``; with ``positions`` (int ``[B, P]`` or ``[P]``, window offsets)
        only those columns, ``[B, F, 4, P]``: the trunk runs on the whole window, the head (1x1
        convolutions, the larger part of the published layout's cost) on the ``P`` columns only.
        In eval mode the columns equal those of the full output; in train mode BatchNorm would
        see only them."""
        h = self.trunk(x)
        window = None
        if self.sizes.get("head", "conv") not in CONV_HEADS:  # the window's summary, before any column is picked
            window = self.head_window(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))
        if positions is not None:
            idx = torch.as_tensor(positions, dtype=torch.long, device=x.device)
            idx = idx.expand(x.shape[0], -1) if idx.dim() == 1 else idx
            h = h.gather(2, idx[:, None, :].expand(-1, h.shape[1], -1))
            x = x.gather(2, idx[:, None, :].expand(-1, x.shape[1], -1))
        if window is None:
            y = self.model_final(h).view(x.shape[0], self.n_outputs, 4, h.shape[-1])
            if self.sizes.get("head") == "difference":  # v[alt] - v[ref]; N (all-zero) columns keep v
                y = y - (y * x.unsqueeze(1).to(y.dtype)).sum(dim=2, keepdim=True)
        else:
            y = self.factored_head(h, x, window)
        if self.sizes["output_scale"] != 1.0:
            y = y * self.sizes["output_scale"]
        if self.sizes["mask_reference"]:
            y = y * (1 - x).unsqueeze(1).to(y.dtype)
        return y


    def factored_head(self, h, x, window):
        """The ``bilinear`` and ``relu`` heads, built like the base model's dense part: a
        substitution changes K hidden units by a local amount ``d[k, a, p] = v[k, a, p] -
        v[k, ref, p]`` (``v``: a 1x1 convolution of the trunk; 0 for the reference base, as in a
        linear model), and the window decides how much each change counts. ``bilinear``:
        ``sum_k G[f, k] d[k, a, p]`` with a per-window gate ``G``; ``relu``: ``sum_k W[f, k]
        (relu(h_k + d[k, a, p]) - relu(h_k))`` with per-window ``h`` and global ``W``. Per position
        ``C 4K + 4FK`` multiply-adds."""
        b, n = x.shape[0], h.shape[-1]
        k = self.sizes["rank"]
        v = self.head_local(h).view(b, k, 4, n)
        d = v - (v * x.unsqueeze(1).to(v.dtype)).sum(dim=2, keepdim=True)
        if self.sizes["head"] == "bilinear":
            return torch.einsum("bfk,bkap->bfap", window.view(b, self.n_outputs, k), d)
        hid = window.view(b, k, 1, 1)
        change = torch.relu(hid + d) - torch.relu(hid)
        return torch.einsum("fk,bkap->bfap", self.head_weight.to(change.dtype), change)


def n_parameters(model):
    """Trainable parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model):
    """Multiply-adds of the convolutions and linear layers in one forward pass of one window
    (counted on a forward pass of an all-zero window; the cost that sets the Multiplexer's speed)."""
    total = [0]

    def count(layer, inputs, output):
        if isinstance(layer, nn.Conv1d):
            total[0] += output.numel() * layer.in_channels // layer.groups * layer.kernel_size[0]
        else:
            total[0] += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 4, model.length))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def preset_sizes(preset, sizes=None):
    """Sizes of a preset; ``sizes`` (dict, e.g. the config's ``multiplexer.demo``) overrides the
    ``demo`` preset only (``beluga`` is fixed by the published layout); ``widths`` and ``dilations``
    left out or empty are those of the trunk (``TRUNK_SIZES``)."""
    if preset not in PRESETS:
        raise InputError("config", "multiplexer.preset", preset, f"expected one of {sorted(PRESETS)}")
    out = dict(PRESETS[preset])
    if preset == "demo":
        given = {k: v for k, v in (sizes or {}).items() if k in out and v is not None and v != []}
        out.update(given)
        if out["trunk"] not in TRUNK_SIZES:
            raise InputError("config", "multiplexer.demo.trunk", out["trunk"], f"expected one of {sorted(TRUNK_SIZES)}")
        out.update({k: v for k, v in TRUNK_SIZES[out["trunk"]].items() if k not in given})
    return out


def build_multiplexer(preset, length, n_outputs, sizes=None, mask_reference=True, output_scale=1.0, seed=None):
    """A ``Multiplexer`` of ``preset`` for windows of ``length`` and ``n_outputs`` outputs. With
    ``seed`` its random start comes from the ``seqmux.seeding`` stream ``(seed, "multiplexer",
    "init")`` (torch's global RNG untouched), else from torch's global RNG."""
    seeded = seeding.torch_seeded(seed, TRACK, "init") if seed is not None else nullcontext()
    with seeded:
        return Multiplexer(length, n_outputs, mask_reference=mask_reference, output_scale=output_scale,
                           **preset_sizes(preset, sizes))


def beluga_multiplexer(length=2000, n_outputs=2002):
    """The published BelugaMultiplexer layout (202,273,376 parameters at the defaults)."""
    return build_multiplexer("beluga", length, n_outputs)


def load_published(path, length=2000, n_outputs=2002):
    """A BelugaMultiplexer with the published weights file (a bare ``state_dict``)."""
    from .models import load_state_dict_checked

    return load_state_dict_checked(beluga_multiplexer(length, n_outputs), path, field="multiplexer weights").eval()


def save_multiplexer(model, path, output_names, mode, preset="", extra=None):
    """``model.pt`` (a ``seqmux.checkpoint`` of kind ``multiplexer``): the state_dict, and as
    metadata the constructor config, output names, window length, target mode, preset and
    ``extra`` (plain values, e.g. the training facts)."""
    checkpoint.save(path, KIND, model, config=model.config(), output_names=[str(n) for n in output_names],
                    length=model.length, mode=mode, preset=preset, **(extra or {}))


def _old_format_hint(path):
    """What a ``{"config", "state_dict"}`` file (no checkpoint) holds: a base model of
    ``seqmux.models`` (its config has ``channels``) or a Multiplexer of the previous format; ""
    for anything else."""
    if checkpoint.kind_of(path) == "base_model":
        return "not a multiplexer model (it holds a base model: give it to --exact --weights)"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a PyTorch file at all: the checkpoint's own message says so
        return ""
    config = blob.get("config") if isinstance(blob, dict) and "state_dict" in blob else None
    if not isinstance(config, dict):
        return ""
    if "channels" in config:
        return "not a multiplexer model (it holds a base model: give it to --exact --weights)"
    return "a multiplexer model.pt of the previous file format: rerun the train stage to rewrite it"


def load_multiplexer(path, device="cpu"):
    """``(model, info)`` from a ``model.pt`` written by the train stage; ``model`` in eval mode.

    ``model(onehot [B, 4, L]) -> [B, F, 4, L]``. ``info``: ``output_names``, ``length``, ``mode``,
    ``preset``, ``sizes`` (the constructor config), ``n_outputs``, ``meta`` (all the file's
    metadata). One-line InputError on a missing file, a file that is not a Multiplexer checkpoint
    (a base model's file, a file of the previous format) or weights that do not fit.
    """
    path = Path(path)
    try:
        state, meta = checkpoint.load(path, KIND, field="multiplexer")
    except InputError:
        hint = _old_format_hint(path) if path.is_file() else ""
        if not hint:
            raise
        raise InputError(path, "multiplexer", str(path), hint) from None
    try:
        model = Multiplexer(**meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, "multiplexer", str(path), f"not a multiplexer model: bad config "
                         f"({type(err).__name__}: {err})".splitlines()[0]) from None
    checkpoint.load_into(model, state, path, KIND, field="multiplexer").to(device)
    info = dict(output_names=list(meta.get("output_names", [])), length=int(meta["config"]["length"]),
                n_outputs=int(meta["config"]["n_outputs"]), mode=meta.get("mode", "logfold"),
                preset=meta.get("preset", ""), sizes=dict(meta["config"]), meta=meta)
    return model, info
