"""Fast exact in-silico mutagenesis (ISM): incremental forward passes of single substitutions.

A substitution at position ``p`` only changes the activations inside its receptive field. For a
base model that is a chain of

* ``Conv1d`` / ``Conv2d`` with ``(1, k)`` kernels (any stride, dilation, groups, zero padding),
* ``MaxPool`` / ``AvgPool`` 1d or 2d with ``(1, k)`` windows (floor mode),
* element-wise layers: activations, ``BatchNorm`` (eval), ``Dropout`` (eval), ``Identity``,
* a flatten (``nn.Flatten``, ``seqmux.models.Flatten``, ``torch.flatten(x, 1)``,
  ``x.reshape(x.shape[0], -1)``), then dense layers (``Linear``, element-wise layers,
  ``BatchNorm1d``, ``Softmax``); ``unsqueeze(2)`` / ``squeeze(2)`` in the convolutional part,

the reference is run once and its activations cached. Each mutant then carries only the *change*
of every activation (mutant minus reference) over a window that covers the positions its
substitution can reach, layer by layer:

* a stride-1 convolution is linear, so the change of its output is the transposed convolution of
  the change of its input (the bias cancels): ``W_in x k`` taps instead of ``(W_in + k - 1) x k``;
* an element-wise layer maps a change to ``f(ref + change) - f(ref)``, ``ref`` read from the cache;
* a pooling layer (or strided convolution) recomputes its affected output windows whole from the
  cached reference input plus the change, so the changed range is widened to pool boundaries;
* the first dense layer is a sparse update of the reference's pre-activation,
  ``h = h_ref + W[:, cols] @ change[cols]`` over the window's columns only, with ``W``'s columns
  stored position-major (one window's columns are one contiguous block); the later dense layers
  run in full.

Nothing is approximated: results equal full forward passes up to float rounding. Substitutions
that change nothing (identity, or a position that pooling drops) get the reference exactly.
Mutants are processed in chunks of nearby positions: every mutant of a position shares each
window's geometry, and mutants whose last windows start within a few positions share one
dense-layer GEMM. The same code runs on CPU and CUDA.

``analyse`` finds the plan from a ``torch.fx`` trace of the model, and the plan's own reference
output is checked against the model's on every window. For a model it cannot analyse,
``fast_substitution_predictions`` logs one line and returns ``None``, and
``seqmux.ism.predict_substitutions`` falls back to naive ISM.
"""

import logging
import operator
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """The model is not a chain of layers that incremental ISM handles."""


# ---------------------------------------------------------------------------------------------
# layer classification

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
                nn.LogSigmoid, nn.Tanhshrink, nn.Threshold, nn.Softshrink, nn.Hardshrink)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_DENSE_ONLY = (nn.Softmax, nn.LogSoftmax)

_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, F.gelu, F.silu, F.elu,
    F.selu, F.celu, F.leaky_relu, F.softplus, F.mish, F.hardtanh, F.relu6, F.logsigmoid, F.softsign,
    torch.nn.functional.hardswish, torch.nn.functional.hardsigmoid, torch.abs, torch.square,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "exp", "abs", "square", "contiguous", "clone", "float"}


def _leaf_types():
    from .models import Flatten as SeqmuxFlatten

    return _ACTIVATIONS + _DROPOUTS + _POOLS + _CONVS + _NORMS + _DENSE_ONLY + (
        nn.Linear, nn.Identity, nn.Flatten, nn.PReLU, SeqmuxFlatten)


class _Tracer(fx.Tracer):
    """Keeps the layers this module understands (and seqmux's Flatten) as leaves."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, _leaf_types()):
            return True
        return super().is_leaf_module(m, qualname)


def _pair(v, what):
    """``(1, k)``-style 2d hyper-parameter -> ``(first, last)`` ints."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise Unsupported(f"{what}={v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _single(v):
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


@dataclass
class _Step:
    """One layer of the convolutional part, in 1d terms (``[N, C, W]`` windows)."""
    kind: str                    # conv | maxpool | avgpool | pointwise
    name: str
    fn: object                   # pointwise: [N, C, W] -> [N, C, W]; conv: () -> weight [C', C/g, k]
    c_in: int
    c_out: int
    l_in: int
    l_out: int
    k: int = 1
    s: int = 1
    d: int = 1
    pl: int = 0
    pr: int = 0
    groups: int = 1
    pad_value: float = 0.0
    delta: bool = False          # conv of stride 1: changes propagate by a transposed convolution
    relu: bool = False           # pointwise ReLU (done in place on the mutants' own windows)


@dataclass
class _Geometry:
    """Where one step's per-mutant windows lie, for every substituted input position ``p``.

    The step's output window of mutant ``p`` is ``[st[p], st[p] + width)`` (it may hang over the
    ends of the activation; those positions hold zero changes); layers that recompute whole
    windows (pooling, strided convolution) read their input over ``[q0[p], q0[p] + w_in)``,
    which starts ``rel0[p]`` positions into the previous step's window.
    """
    st: np.ndarray
    width: int
    hang: np.ndarray             # window reaches outside the activation
    q0: np.ndarray = None
    rel0: np.ndarray = None
    w_in: int = 0
    ref_margin: tuple = (0, 0)   # padding of the step's reference input that every gather stays inside


@dataclass
class Plan:
    """What ``analyse`` found: the chain's ops, its convolutional steps and dense part."""
    length: int
    ops: list                    # [(ref_fn, step index or None)] in forward order up to the flatten
    steps: list                  # _Step
    pre_linear: list             # element-wise fns between the flatten and the first Linear
    linear: nn.Linear
    dense: list                  # callables after the first Linear, in order
    channels: int                # C of the last convolutional activation
    positions: int               # P of the last convolutional activation
    geometry: list = field(default_factory=list)   # _Geometry per step
    live: np.ndarray = None      # [L] bool: a substitution there can change the output
    device_tables: list = field(default_factory=list)  # per step: dict of int64 tensors on the device
    weights_t: dict = field(default_factory=dict)  # step index -> conv_transpose1d weight
    weight_pm: torch.Tensor = None               # first Linear's weight, columns position-major [H, P*C]
    signature: tuple = ()

    def describe(self):
        parts = []
        for step, geo in zip(self.steps, self.geometry):
            if step.kind != "pointwise":
                parts.append(f"{step.kind}{'(delta)' if step.delta else ''}[{geo.width}]")
        return " -> ".join(parts) + f" -> dense {self.channels}x{self.positions}->{self.linear.out_features}"

    def macs_per_mutant(self):
        """Multiply-adds of one mutant's incremental computation (convolutions and dense layers)."""
        total, width = 0, 1
        for step, geo in zip(self.steps, self.geometry):
            if step.kind == "conv":
                per_tap = step.c_in // step.groups * step.c_out * step.k
                total += per_tap * (width if step.delta else geo.width)
            width = geo.width
        total += width * self.channels * self.linear.out_features
        total += sum(m.in_features * m.out_features for m in self.dense if isinstance(m, nn.Linear))
        return total


def _params_signature(model):
    """Changes when a parameter or buffer is replaced, moved or modified in place."""
    sig = []
    for t in list(model.parameters()) + list(model.buffers()):
        sig.append((t.data_ptr(), t._version, str(t.device), t.dtype))
    return tuple(sig)


def _node_inputs(node):
    """The fx Nodes among a node's args and kwargs."""
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _const_args(node, cur):
    """Args and kwargs of a call with the tensor ``cur`` replaced by a marker (other nodes: error)."""
    def check(n):
        if n is not cur:
            raise Unsupported(f"{node.name} reads more than the previous layer")
        return n
    fx.node.map_arg((node.args, node.kwargs), check)
    return node.args, node.kwargs


def _bind(fn, args, kwargs):
    """``x -> fn(*args, **kwargs)`` with the one node in them (the previous layer) replaced by ``x``."""
    def call(x):
        a, kw = fx.node.map_arg((args, kwargs), lambda n: x)
        return fn(*a, **kw)
    return call


def analyse(model, length):
    """The incremental-ISM ``Plan`` of ``model`` for one-hot inputs ``[B, 4, length]``.

    Raises ``Unsupported`` (with the reason) for models it cannot handle exactly.
    """
    if not isinstance(model, nn.Module):
        raise Unsupported("not an nn.Module")
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # data-dependent control flow, unsupported Python, ...
        raise Unsupported(f"torch.fx cannot trace it ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Unsupported("forward takes more than one input")
    cur = placeholders[0]
    ndim, chans, width = 3, 4, length
    phase = "conv"                      # conv -> flat (after flatten) -> dense (after first Linear)
    ops, steps, pre_linear, dense = [], [], [], []
    linear = None
    flat_cp = None
    shape_nodes = set()

    def is_flatten_reshape(n):
        # x.reshape(x.shape[0], -1) / x.view(x.size(0), -1)
        if n.op != "call_method" or n.target not in ("reshape", "view") or len(n.args) != 3 or n.kwargs:
            return False
        first, rest = n.args[1], n.args[2]
        return rest == -1 and isinstance(first, fx.Node) and first in shape_nodes

    for n in nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            if n.args[0] is not cur:
                raise Unsupported("output is not the last layer's")
            break
        # x.shape / x.size(0) / shape[0]: only as the batch size of a flatten
        if (n.op == "call_function" and n.target is getattr and n.args[0] is cur and n.args[1] == "shape") or \
           (n.op == "call_method" and n.target == "size" and n.args[0] is cur and n.args[1:] in ((0,), ())):
            shape_nodes.add(n)
            continue
        if n.op == "call_function" and n.target is operator.getitem and n.args[0] in shape_nodes:
            if n.args[1] != 0:
                raise Unsupported(f"{n.name} uses a shape other than the batch size")
            shape_nodes.add(n)
            continue
        inputs = [a for a in _node_inputs(n) if a not in shape_nodes]
        if inputs != [cur]:
            raise Unsupported(f"{n.name} is not a chain of single-input layers (residual, branches, ...)")
        if any(a in shape_nodes for a in _node_inputs(n)) and not is_flatten_reshape(n):
            raise Unsupported(f"{n.name} uses the input's shape")
        prev, cur = cur, n

        step = None
        ref_fn = None
        flatten = False
        elementwise = None           # (fn on windows, per-channel?) for element-wise layers
        if n.op == "call_module":
            m = modules[n.target]
            ref_fn = m
            if isinstance(m, _DROPOUTS) and m.training:
                raise Unsupported(f"{n.target}: dropout in training mode")
            if isinstance(m, _DROPOUTS) or isinstance(m, nn.Identity):
                ref_fn = None       # eval: identity
            elif isinstance(m, nn.Flatten):
                if phase == "dense" or ndim == 2:
                    ref_fn = None
                elif m.start_dim == 1 and m.end_dim == -1:
                    flatten = True
                else:
                    raise Unsupported(f"{n.target}: Flatten({m.start_dim}, {m.end_dim})")
            elif type(m).__name__ == "Flatten" and type(m).__module__ == "seqmux.models":
                if phase == "dense" or ndim == 2:
                    ref_fn = None
                else:
                    flatten = True
            elif isinstance(m, _ACTIVATIONS):
                elementwise = (m, False)
            elif isinstance(m, nn.PReLU):
                per_channel = m.num_parameters > 1
                if per_channel and phase == "conv" and m.num_parameters != chans:
                    raise Unsupported(f"{n.target}: PReLU with {m.num_parameters} parameters")
                if per_channel and phase == "flat":
                    raise Unsupported(f"{n.target}: per-feature PReLU before the first dense layer")
                elementwise = (m, per_channel)
            elif isinstance(m, _NORMS):
                if m.training or m.running_mean is None:
                    raise Unsupported(f"{n.target}: batch norm in training mode or without running statistics")
                if phase == "flat":
                    raise Unsupported(f"{n.target}: batch norm between the flatten and the first dense layer")
                if phase == "conv":
                    want = 4 if isinstance(m, nn.BatchNorm2d) else 3
                    if ndim != want or m.num_features != chans:
                        raise Unsupported(f"{n.target}: {type(m).__name__} on a {ndim}-d activation")
                elementwise = (m, True)
            elif isinstance(m, _CONVS):
                if phase != "conv":
                    raise Unsupported(f"{n.target}: convolution after the flatten")
                step = _conv_step(n.target, m, ndim, chans, width)
            elif isinstance(m, _POOLS):
                if phase != "conv":
                    raise Unsupported(f"{n.target}: pooling after the flatten")
                step = _pool_step(n.target, m, ndim, chans, width)
            elif isinstance(m, nn.Linear):
                if phase == "conv":
                    raise Unsupported(f"{n.target}: dense layer before a flatten")
                if phase == "flat":
                    if m.in_features != chans * width:
                        raise Unsupported(f"{n.target}: {m.in_features} inputs, not {chans} x {width}")
                    linear = m
                    phase = "dense"
                    continue
                dense.append(m)
                continue
            elif isinstance(m, _DENSE_ONLY):
                if phase != "dense" or m.dim not in (1, -1):
                    raise Unsupported(f"{n.target}: {type(m).__name__} before the dense layers")
                dense.append(m)
                continue
            else:
                raise Unsupported(f"{n.target}: layer {type(m).__name__} is not supported")
        elif n.op in ("call_function", "call_method"):
            # a flatten by reshape also reads the batch size (a shape node), not only ``prev``
            args, kwargs = ((), {}) if is_flatten_reshape(n) else _const_args(n, prev)
            target = n.target
            if n.op == "call_method":
                name = target
                fn = getattr(torch.Tensor, name, None)
            else:
                name = getattr(target, "__name__", str(target))
                fn = target
            rest = [a for a in args if a is not prev]
            if (n.op == "call_method" and name in ("unsqueeze", "squeeze")) or \
               (n.op == "call_function" and target in (torch.unsqueeze, torch.squeeze)):
                dim = rest[0] if rest else kwargs.get("dim")
                if name == "unsqueeze" and ndim == 3 and phase == "conv" and dim in (2, -2):
                    ndim = 4
                elif name == "squeeze" and ndim == 4 and phase == "conv" and dim in (2, -2):
                    ndim = 3
                else:
                    raise Unsupported(f"{n.name}: {name}({dim}) on a {ndim}-d activation")
                ops.append((_bind(fn, args, kwargs), None))
                continue
            if (n.op == "call_method" and name == "flatten") or (n.op == "call_function" and target is torch.flatten):
                start = rest[0] if rest else kwargs.get("start_dim", 0)
                end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
                if start != 1 or end != -1:
                    raise Unsupported(f"{n.name}: flatten({start}, {end})")
                if phase == "dense" or ndim == 2:
                    continue
                flatten = True
                ref_fn = _bind(fn, args, kwargs)
            elif is_flatten_reshape(n):
                if phase == "dense" or ndim == 2:
                    continue
                flatten = True
                ref_fn = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
            elif n.op == "call_function" and target is F.dropout:
                if kwargs.get("training", args[2] if len(args) > 2 else True):
                    raise Unsupported(f"{n.name}: dropout in training mode")
                continue
            elif (n.op == "call_function" and target in _ELEMENTWISE_FUNCTIONS) or \
                 (n.op == "call_method" and name in _ELEMENTWISE_METHODS):
                if name in ("contiguous", "clone", "float"):
                    continue
                elementwise = (_bind(fn, args, kwargs), False)
                ref_fn = elementwise[0]
                if target in (torch.relu, F.relu) and len(args) == 1 and not kwargs:
                    elementwise = (torch.relu, False)
            else:
                raise Unsupported(f"{n.name}: operation {name} is not supported")
        else:
            raise Unsupported(f"{n.name}: {n.op} node")

        if flatten:
            if phase != "conv":
                raise Unsupported(f"{n.name}: second flatten")
            ops.append((ref_fn, None))       # [B, C, 1, P] flattens channel-major like [B, C, P]
            flat_cp = (chans, width)
            phase, ndim = "flat", 2
            continue
        if step is not None:
            steps.append(step)
            ops.append((ref_fn, len(steps) - 1))
            chans, width = step.c_out, step.l_out
            continue
        if ref_fn is None:
            continue
        if phase == "dense":
            dense.append(elementwise[0] if elementwise else ref_fn)
            continue
        # element-wise layer in the convolutional part (or between flatten and first Linear)
        fn, _ = elementwise
        if phase == "flat":
            pre_linear.append(fn)
            fn_w = fn
        elif ndim == 4:
            fn_w = (lambda f: (lambda x: f(x.unsqueeze(2)).squeeze(2)))(fn)
        else:
            fn_w = fn
        steps.append(_Step("pointwise", n.name, fn_w, chans, chans, width, width))
        steps[-1].relu = type(fn) is nn.ReLU or fn is torch.relu
        if phase == "conv":
            ops.append((ref_fn, len(steps) - 1))
    else:
        raise Unsupported("graph has no output")

    if linear is None:
        raise Unsupported("no flatten followed by a dense layer")
    channels, positions = flat_cp
    plan = Plan(length, ops, steps, pre_linear, linear, dense, channels, positions)
    _geometry(plan)
    return plan


def _conv_step(name, m, ndim, chans, width):
    if isinstance(m, nn.Conv2d):
        if ndim != 4:
            raise Unsupported(f"{name}: Conv2d on a {ndim}-d activation")
        kh, k = m.kernel_size
        sh, s = m.stride
        dh, d = m.dilation
        ph = 0 if isinstance(m.padding, str) else m.padding[0]
        if kh != 1 or sh != 1 or dh != 1 or ph != 0:
            raise Unsupported(f"{name}: Conv2d kernel {m.kernel_size} stride {m.stride} padding {m.padding}")
        weight = lambda: m.weight[:, :, 0, :]  # noqa: E731
    else:
        if ndim != 3:
            raise Unsupported(f"{name}: Conv1d on a {ndim}-d activation")
        k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        weight = lambda: m.weight  # noqa: E731
    if m.padding_mode != "zeros":
        raise Unsupported(f"{name}: padding mode {m.padding_mode}")
    if m.in_channels != chans:
        raise Unsupported(f"{name}: {m.in_channels} input channels, activation has {chans}")
    if m.padding == "valid":
        pl = pr = 0
    elif m.padding == "same":
        total = d * (k - 1)
        pl, pr = total // 2, total - total // 2
    else:
        pl = pr = m.padding[-1]
    l_out = (width + pl + pr - d * (k - 1) - 1) // s + 1
    if l_out < 1:
        raise Unsupported(f"{name}: no output positions")
    return _Step("conv", name, weight, chans, m.out_channels, width, l_out, k, s, d, pl, pr, m.groups, 0.0, s == 1)


def _pool_step(name, m, ndim, chans, width):
    two_d = isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))
    if two_d and ndim != 4 or not two_d and ndim != 3:
        raise Unsupported(f"{name}: {type(m).__name__} on a {ndim}-d activation")
    if m.ceil_mode:
        raise Unsupported(f"{name}: ceil_mode")
    stride = m.stride if m.stride is not None and m.stride != () else m.kernel_size
    if two_d:
        kh, k = _pair(m.kernel_size, "kernel_size")
        sh, s = _pair(stride, "stride")
        ph, p = _pair(m.padding, "padding")
        if kh != 1 or sh != 1 or ph != 0:
            raise Unsupported(f"{name}: pool kernel {m.kernel_size} stride {stride} padding {m.padding}")
    else:
        k, s, p = _single(m.kernel_size), _single(stride), _single(m.padding)
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        if m.return_indices:
            raise Unsupported(f"{name}: return_indices")
        dh, d = _pair(m.dilation, "dilation") if two_d else (1, _single(m.dilation))
        if dh != 1:
            raise Unsupported(f"{name}: dilation {m.dilation}")
        kind, pad_value = "maxpool", float("-inf")
    else:
        if p and not m.count_include_pad:
            raise Unsupported(f"{name}: padded average pooling that excludes the padding")
        if getattr(m, "divisor_override", None):
            raise Unsupported(f"{name}: divisor_override")
        d, kind, pad_value = 1, "avgpool", 0.0
    l_out = (width + 2 * p - d * (k - 1) - 1) // s + 1
    if l_out < 1:
        raise Unsupported(f"{name}: no output positions")
    return _Step(kind, name, None, chans, chans, width, l_out, k, s, d, p, p, 1, pad_value)


def _geometry(plan):
    """The ``_Geometry`` of every step, from the range ``[lo, hi)`` of positions that a
    substitution at ``p`` can change in each activation."""
    L = plan.length
    lo = np.arange(L, dtype=np.int64)
    hi = lo + 1
    st, width = lo.copy(), 1
    geometry = []
    for step in plan.steps:
        if step.kind == "pointwise":
            geometry.append(_Geometry(st, width, np.zeros(L, dtype=bool)))
            continue
        ext = (step.k - 1) * step.d
        new_lo = np.maximum(-((ext - lo - step.pl) // step.s), 0)          # ceil((lo + pl - ext) / s)
        new_hi = np.minimum((hi - 1 + step.pl) // step.s + 1, step.l_out)
        empty = (hi <= lo) | (new_hi <= new_lo)
        new_lo, new_hi = np.where(empty, 0, new_lo), np.where(empty, 0, new_hi)
        direct_width = int(max(1, min(step.l_out, (new_hi - new_lo).max(initial=1))))
        if step.kind == "conv" and step.s == 1:
            # cheaper of: transposed convolution of the changes (width taps per output channel
            # and tap), or recomputing the affected outputs (direct_width), which wins when
            # the windows are wider than the activation itself
            step.delta = width <= direct_width
        if step.delta:
            # transposed convolution of the changes: the window grows by the kernel's extent
            new_st, new_width = st + step.pl - ext, width + ext
            geo = _Geometry(new_st, new_width, (new_st < 0) | (new_st + new_width > step.l_out))
        else:
            # whole windows recomputed from their inputs (pool windows aligned to their stride)
            new_width = direct_width
            new_st = np.clip(new_lo, 0, step.l_out - new_width)
            q0 = new_st * step.s - step.pl
            w_in = (new_width - 1) * step.s + ext + 1
            geo = _Geometry(new_st, new_width, (new_st < 0) | (new_st + new_width > step.l_out), q0, q0 - st, w_in)
        geometry.append(geo)
        lo, hi, st, width = new_lo, new_hi, new_st, new_width
    # a substitution whose change dies out (e.g. in the positions a pooling layer drops) leaves the
    # output exactly as it is: such positions are never computed, and do not size the paddings
    plan.live = hi > lo
    live = plan.live if plan.live.any() else np.ones(L, dtype=bool)
    for step, geo in zip(plan.steps, geometry):
        if step.kind == "pointwise":
            st = geo.st[live]
            geo.ref_margin = (max(0, -int(st.min())), max(0, int((st + geo.width).max()) - step.l_in))
        elif geo.q0 is not None:
            q0 = geo.q0[live]
            geo.ref_margin = (max(0, -int(q0.min())), max(0, int((q0 + geo.w_in).max()) - step.l_in))
    plan.geometry = geometry


# ---------------------------------------------------------------------------------------------
# plan cache

_PLANS = weakref.WeakKeyDictionary()   # model -> {length: (signature, Plan or reason string)}
_REPORTED = weakref.WeakKeyDictionary()


def get_plan(model, length):
    """The cached ``Plan`` of ``model`` for windows of ``length`` (tables and derived weights on
    the model's device), or the reason string why it cannot be analysed."""
    sig = _params_signature(model) + tuple(m.training for m in model.modules())
    per_model = _PLANS.setdefault(model, {})
    entry = per_model.get(length)
    if entry is not None and entry[0] == sig:
        return entry[1]
    try:
        plan = analyse(model, length)
        plan.signature = sig
        dev = plan.linear.weight.device
        with torch.no_grad():
            for geo in plan.geometry:
                tab = {"st": torch.as_tensor(geo.st, device=dev)}
                if geo.q0 is not None:
                    tab["q0"] = torch.as_tensor(geo.q0 + geo.ref_margin[0], device=dev)
                    tab["rel0"] = torch.as_tensor(geo.rel0, device=dev)
                if geo.q0 is None:
                    tab["ref_st"] = torch.as_tensor(geo.st + geo.ref_margin[0], device=dev)
                plan.device_tables.append(tab)
            for i, step in enumerate(plan.steps):
                if step.kind == "conv" and step.delta:
                    w = step.fn().detach()                                  # [C', C/g, k]
                    g = step.groups
                    co, ci, k = w.shape
                    # conv_transpose1d weight [C, C'/g, k], taps reversed
                    wt = w.reshape(g, co // g, ci, k).transpose(1, 2).reshape(g * ci, co // g, k)
                    plan.weights_t[i] = wt.flip(2).contiguous()
            w = plan.linear.weight.detach()
            h = w.shape[0]
            # columns position-major (p * C + c): one window's columns are one contiguous block
            plan.weight_pm = w.reshape(h, plan.channels, plan.positions).transpose(1, 2) \
                .reshape(h, plan.positions * plan.channels).contiguous()
        result = plan
    except Unsupported as err:
        result = str(err)
    per_model[length] = (sig, result)
    return result


def analysable(model, length):
    """``(True, description)`` when fast ISM handles ``model`` on windows of ``length``, else
    ``(False, reason)``."""
    plan = get_plan(model, length)
    if isinstance(plan, Plan):
        return True, plan.describe()
    return False, plan


# ---------------------------------------------------------------------------------------------
# the incremental computation

def _reference(plan, onehot):
    """Reference activations (``acts[i]``: step i's output ``[C_i, L_i]``), the first dense
    layer's pre-activation ``[H]`` and the output ``[F]``, following the model's own forward."""
    x = onehot.unsqueeze(0)
    acts = [None] * len(plan.steps)
    for fn, idx in plan.ops:
        if fn is not None:
            x = fn(x)
        if idx is not None:
            step = plan.steps[idx]
            acts[idx] = x.reshape(step.c_out, step.l_out)
    flat = x
    a = flat.reshape(plan.channels, plan.positions)
    n_conv = sum(1 for _, idx in plan.ops if idx is not None)
    for idx in range(n_conv, len(plan.steps)):       # element-wise steps after the flatten
        a = plan.steps[idx].fn(a.unsqueeze(0))[0]
        acts[idx] = a
    for fn in plan.pre_linear:
        flat = fn(flat)
    pre = plan.linear(flat)
    y = pre
    for fn in plan.dense:
        y = fn(y)
    return acts, pre[0], y[0]


def _windows(padded, starts, width):
    """``[N, C, width]`` windows of ``padded [C, Lp]`` starting at ``starts [N]``."""
    return padded.unfold(1, width, 1).permute(1, 0, 2).index_select(0, starts)


def _shifted(delta, starts, width, clip):
    """``[N, C, width]`` windows of each mutant's own ``delta [N, C, W]`` (zero outside it),
    starting at ``starts [N]`` (may be negative); ``clip``: whether some reach outside."""
    n, c, w = delta.shape
    idx = starts[:, None] + torch.arange(width, device=delta.device)
    if not clip:
        return delta.gather(2, idx[:, None, :].expand(n, c, width))
    out = delta.gather(2, idx.clamp(0, w - 1)[:, None, :].expand(n, c, width))
    return out.masked_fill_(((idx < 0) | (idx >= w))[:, None, :], 0.0)


def _window_reference(plan, onehot):
    """Per-window cache: padded reference inputs of the steps that read them, first dense
    layer's pre-activation, the chain's own output."""
    acts, pre, out = _reference(plan, onehot)
    padded = {}
    prev_pointwise = False
    for i, (step, geo) in enumerate(zip(plan.steps, plan.geometry)):
        src = onehot if i == 0 else acts[i - 1]
        if step.kind == "pointwise" and not prev_pointwise or step.kind == "maxpool":
            value = step.pad_value if step.kind == "maxpool" else 0.0
            padded[i] = F.pad(src, geo.ref_margin, value=value) if any(geo.ref_margin) else src
        prev_pointwise = step.kind == "pointwise"
    return padded, pre, out


def _run_chunk(plan, padded, ref_pre, onehot, pos, pos_np, alts):
    """Outputs ``[N, F]`` of the mutants putting base ``alts`` at positions ``pos`` (sorted;
    ``pos_np`` the same on the host)."""
    n = pos.shape[0]
    dev = pos.device
    rows = torch.arange(n, device=dev)
    delta = -onehot[:, pos].T.unsqueeze(2)                       # [N, 4, 1]: e_alt - reference column
    delta[rows, alts, 0] += 1.0
    steps, i = plan.steps, 0
    while i < len(steps):
        step, geo, tab = steps[i], plan.geometry[i], plan.device_tables[i]
        if step.kind == "pointwise":
            # a run of element-wise layers: f(ref + delta) - f(ref) on the window
            ref = _windows(padded[i], tab["ref_st"][pos], geo.width)
            new = ref + delta
            while i < len(steps) and steps[i].kind == "pointwise":
                if steps[i].relu:
                    ref, new = ref.relu_(), new.relu_()
                else:
                    ref, new = steps[i].fn(ref), steps[i].fn(new)
                i += 1
            delta = new.sub_(ref)
            continue
        if step.kind == "conv" and step.delta:
            delta = F.conv_transpose1d(delta, plan.weights_t[i], None, 1, 0, 0, step.groups, step.d)
        else:
            rel0 = geo.rel0[pos_np]
            clip = bool((rel0 < 0).any() or (rel0 + geo.w_in > delta.shape[2]).any())
            shifted = _shifted(delta, tab["rel0"][pos], geo.w_in, clip)
            if step.kind == "conv":
                delta = F.conv1d(shifted, step.fn(), None, step.s, 0, step.d, step.groups)
            elif step.kind == "avgpool":
                delta = F.avg_pool1d(shifted, step.k, step.s, 0)
            else:
                ref = _windows(padded[i], tab["q0"][pos], geo.w_in)
                delta = F.max_pool1d(ref + shifted, step.k, step.s, 0, step.d) - \
                    F.max_pool1d(ref, step.k, step.s, 0, step.d)
        if geo.hang[pos_np].any():
            cols = tab["st"][pos][:, None] + torch.arange(geo.width, device=dev)
            inside = (cols >= 0) & (cols < step.l_out)
            delta = torch.where(inside[:, None, :], delta, 0.0)
        i += 1
    # sparse update of the first dense layer over the windows' columns: one GEMM per run of
    # mutants whose windows start within DENSE_SPAN positions (their union window, zero-filled)
    c, w, p = plan.channels, delta.shape[2], plan.positions
    starts = plan.geometry[-1].st[pos_np] if steps else pos_np
    hidden = torch.empty(n, plan.weight_pm.shape[0], device=dev, dtype=delta.dtype)
    for r0, r1, runs in _dense_groups(starts):
        a, b = max(runs[0][2], 0), min(runs[-1][2] + w, p)       # union of the windows, clipped
        if b <= a:
            hidden[r0:r1] = ref_pre
            continue
        if len(runs) == 1:
            s0 = runs[0][2]
            x = delta[r0:r1, :, a - s0:b - s0].transpose(1, 2).reshape(r1 - r0, (b - a) * c)
        else:
            x = delta.new_zeros(r1 - r0, b - a, c)
            for q0, q1, s0 in runs:
                lo, hi = max(s0, a), min(s0 + w, b)
                if hi > lo:
                    x[q0 - r0:q1 - r0, lo - a:hi - a] = delta[q0:q1, :, lo - s0:hi - s0].transpose(1, 2)
            x = x.view(r1 - r0, (b - a) * c)
        torch.addmm(ref_pre, x, plan.weight_pm[:, a * c:b * c].T, out=hidden[r0:r1])
    y = hidden
    for fn in plan.dense:
        y = fn(y)
    return y


DENSE_SPAN = 4   # window starts merged into one dense GEMM (more rows; a little more width)


def _dense_groups(starts, span=DENSE_SPAN):
    """``(r0, r1, runs)`` row ranges of sorted ``starts`` spanning fewer than ``span`` values;
    ``runs``: ``(q0, q1, start)`` of each distinct start in it."""
    n = len(starts)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(starts)) + 1, [n]])
    groups, runs = [], []
    for q0, q1 in zip(bounds[:-1], bounds[1:]):
        s0 = int(starts[q0])
        if runs and s0 - runs[0][2] >= span:
            groups.append((runs[0][0], runs[-1][1], runs))
            runs = []
        runs.append((int(q0), int(q1), s0))
    if runs:
        groups.append((runs[0][0], runs[-1][1], runs))
    return groups


def _chunks(starts, batch_size):
    """Split sorted mutants into chunks of at most ``batch_size``, cutting where the last
    window's start changes when possible (one dense-layer GEMM per window start)."""
    n = len(starts)
    bounds = [0]
    change = np.flatnonzero(np.diff(starts)) + 1
    while bounds[-1] < n:
        lo = bounds[-1]
        hi = min(lo + batch_size, n)
        if hi < n:
            inside = change[(change > lo) & (change <= hi)]
            if len(inside):
                hi = int(inside[-1])
        bounds.append(hi)
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def fast_substitution_predictions(model, onehot, offsets, alts, reference=None, batch_size=256):
    """Outputs ``[M, F]`` of the model on each substitution of ``onehot [4, L]``, by incremental
    computation; ``None`` when the model cannot be analysed (the caller falls back to naive ISM).

    ``reference``: the model's own output ``[F]`` on ``onehot`` (computed when not given); the
    plan's reference must match it, else the model counts as not analysable. Identity
    substitutions get exactly ``reference``. ``batch_size``: mutants per chunk.
    """
    length = onehot.shape[-1]
    plan = get_plan(model, length)
    if reference is None:
        reference = model(onehot.unsqueeze(0))[0]
    if not isinstance(plan, Plan):
        _report(model, plan)
        return None
    padded, ref_pre, ref_out = _window_reference(plan, onehot)
    if ref_out.shape != reference.shape or not torch.allclose(ref_out, reference, rtol=1e-4, atol=1e-5):
        reason = "its layer chain does not reproduce the model's output"
        _PLANS[model][length] = (plan.signature, reason)
        _report(model, reason)
        return None
    m = offsets.shape[0]
    out = reference.new_empty(m, reference.shape[0])
    if m == 0:
        return out
    offsets, alts = offsets.long(), alts.long()
    # identity substitutions (the column already is that base) and substitutions whose change
    # cannot reach the output: exactly the reference
    target = F.one_hot(alts, 4).to(onehot.dtype)
    identity = (onehot[:, offsets].T == target).all(1)
    live = torch.as_tensor(plan.live, device=offsets.device)[offsets]
    out[identity | ~live] = reference
    todo = torch.nonzero(~identity & live).flatten()
    if todo.numel() == 0:
        return out
    order = todo[torch.argsort(offsets[todo], stable=True)]
    pos, alt_sorted = offsets[order], alts[order]
    pos_np = pos.cpu().numpy()
    starts = plan.geometry[-1].st[pos_np] if plan.steps else pos_np
    for a, b in _chunks(starts, max(1, int(batch_size))):
        out[order[a:b]] = _run_chunk(plan, padded, ref_pre, onehot, pos[a:b], pos_np[a:b],
                                     alt_sorted[a:b]).to(out.dtype)
    return out


def _report(model, reason):
    """Log once per model that fast ISM falls back to naive ISM."""
    if _REPORTED.get(model) != reason:
        _REPORTED[model] = reason
        log.info("fast ISM cannot analyse %s (%s): using naive ISM", type(model).__name__, reason)
