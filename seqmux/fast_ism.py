"""Fast exact in-silico mutagenesis (ISM): incremental forward passes of single substitutions.

A substitution at position ``p`` only changes the activations inside its receptive field. The
model's forward pass is captured as a graph (``seqmux.capture``: a trace that knows every
activation's shape, so Python control flow on shapes, such as the published Beluga's
``Lambda(lambda x: x.view(1, -1) if 1 == len(x.size()) else x)``, is followed), and each node that
depends on the input is one of three kinds:

* **local**: its output position ``i`` depends on a bounded range of input positions. Each
  mutant carries only the *change* of such an activation (mutant minus reference) over a window
  that covers the positions its substitution can reach, ``[N, C, W]``:

  - ``Conv1d`` / ``Conv2d`` with ``(1, k)`` kernels (any padding, stride, dilation, groups):
    stride 1 is linear, so the change of the output is the transposed convolution of the
    change of the input (the bias cancels); a strided convolution, or one whose window would
    outgrow its output, recomputes the affected outputs from the input's change;
  - ``MaxPool`` / ``AvgPool`` 1d or 2d with ``(1, k)`` windows recompute their affected output
    windows whole from the cached reference input plus the change;
  - element-wise layers (activations, batch norm and dropout in eval mode, ``exp``, arithmetic
    with a constant or a per-channel parameter) map a change to ``f(ref + change) - f(ref)``;
  - residual additions and other element-wise operations of two local activations work on the
    union of their windows; crops (``x[..., a:b]``) shift the window;
  - ``unsqueeze(2)`` / ``squeeze(2)`` and flattens change only how the activation is viewed.

* **first dense layer**: a ``Linear`` on a flattened local activation is a sparse update of the
  reference's pre-activation, ``h = h_ref + W[:, cols] @ change[cols]``, over the window's
  columns only (``W``'s columns stored position-major, so one window's columns are one block).

* **length reduction**: a sum or mean over the length axis of a local activation is the
  reference's plus the sum of the change window (divided by the length for a mean).

* **full**: everything else (later dense layers, global max pooling, softmax, recurrent layers,
  anything without a rule) runs in full on the mutants' whole activations: the cached reference
  with each mutant's changed window written in. An operation without a rule is computed in
  full, never approximated.

Nothing is approximated: results equal full forward passes up to float rounding. Substitutions
that change nothing (identity, or a position every path drops, e.g. in pooling) get the
reference exactly. Mutants are processed in chunks of nearby positions: every mutant of a
position shares each window's geometry, and mutants whose last windows start within a few
positions share one dense-layer GEMM. The same code runs on CPU and CUDA.

``analyse`` builds the plan once per model and window length; the plan's own reference output is
checked against the model's on every window. For a model it cannot capture, or in which no
layer before the first full one is local, ``fast_substitution_predictions`` logs one line and
returns ``None``, and ``seqmux.ism.predict_substitutions`` falls back to naive ISM.
"""

import logging
import operator
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .capture import CaptureError, capture, model_name

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """The model cannot take the incremental path (the reason is the message)."""


# ---------------------------------------------------------------------------------------------
# operation classification

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
                nn.LogSigmoid, nn.Tanhshrink, nn.Threshold, nn.Softshrink, nn.Hardshrink)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

_UNARY_FUNCTIONS = {
    torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, F.gelu, F.silu, F.elu,
    F.selu, F.celu, F.leaky_relu, F.softplus, F.mish, F.hardtanh, F.relu6, F.logsigmoid, F.softsign,
    F.hardswish, F.hardsigmoid, torch.abs, torch.square, torch.neg, torch.log1p, torch.expm1,
    operator.neg, torch.clamp, torch.clip,
}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "exp", "abs", "square", "neg", "log1p", "expm1", "clamp", "clip"}
_NO_OP_METHODS = {"contiguous", "clone", "float", "detach"}
_BINARY = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
           operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
           torch.maximum: "max", torch.minimum: "min"}
_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "maximum": "max", "minimum": "min"}
_BINARY_FN = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
              "max": torch.maximum, "min": torch.minimum}


def _leaf_types():
    from .models import Flatten as SeqmuxFlatten

    return (SeqmuxFlatten,)


def _pair(v, what):
    """``(1, k)``-style 2d hyper-parameter -> ``(first, last)`` ints."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise Unsupported(f"{what}={v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _single(v):
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


# ---------------------------------------------------------------------------------------------
# the plan

@dataclass
class _Local:
    """One local activation, viewed as ``[C, l]`` (a ``[1, C, 1, l]`` or flattened ``[1, C * l]``
    value is the same numbers), and the operation that makes its change from its sources'.

    The change of mutant ``p`` lives in the window ``[st[p], st[p] + width)`` (it may hang over
    the ends of the activation; those positions hold zero changes); ``lo[p], hi[p]`` is the range
    that can really change. Operations that read a source over another window read it from
    ``rel[j][p]`` positions into the source's window, ``w_in`` wide.
    """
    id: int
    op: str                      # input | alias | conv | pool | pointwise | shift | binary | crop | cat | channels
    name: str
    c: int
    length: int
    shape: tuple                 # the node's value shape on batch 1
    src: list = field(default_factory=list)
    fn: object = None            # pointwise: windows -> windows; binary: (a, b) -> out; conv: () -> weight
    kind: str = ""               # conv | maxpool | avgpool | add | sub | ... (binary)
    k: int = 1
    s: int = 1
    d: int = 1
    pl: int = 0
    groups: int = 1
    pad_value: float = 0.0
    delta: bool = False          # conv of stride 1 done as a transposed convolution of the change
    relu: bool = False
    flat: bool = False
    hw: bool = False             # viewed as [1, 1, C, l] (the window unsqueezed for a Conv2d(1, C', (C, k)))
    st: np.ndarray = None
    width: int = 1
    lo: np.ndarray = None
    hi: np.ndarray = None
    rel: list = field(default_factory=list)
    w_in: int = 0
    reads: list = field(default_factory=list)    # indices into Plan.reads (reference windows it needs)
    pair_in: bool = False        # pointwise reading its source's (ref, new) pair
    in_place: bool = False       # ... and may overwrite it (the source has no other consumer)
    consumers: int = 0
    last: int = -1               # the last local that reads this one (its change is freed after it)
    keep: bool = False           # read after the local part (dense update, layers run in full)


@dataclass
class _Dense:
    """A first dense layer: ``Linear`` on the flattened local activation ``src``."""
    node: fx.Node
    src: int
    linear: nn.Linear
    weight_pm: torch.Tensor = None


@dataclass
class _Reduce:
    """A sum or mean over the length axis of a local activation ``src`` (``[1, C, l]`` ->
    ``[1, C]``, or ``[1, C, 1]`` with keepdim): the reference's plus the sum of the change window
    (zero outside the activation), divided by ``l`` for a mean."""
    node: fx.Node
    src: int
    kind: str
    length: int


@dataclass
class Plan:
    """What ``analyse`` found for one model and window length."""
    length: int
    graph: fx.Graph
    modules: dict
    locals: list                 # _Local in forward order
    node_local: dict             # fx Node -> _Local id (several nodes may view one activation)
    dense: list                  # _Dense
    replay: list                 # fx Nodes computed in full, in forward order
    static: dict                 # fx Node -> value that does not depend on the input
    output: fx.Node
    reads: list = field(default_factory=list)    # (local id, starts [L], width, pad value, margins)
    live: np.ndarray = None      # [L] bool: a substitution there can change the output
    tables: list = field(default_factory=list)   # per local: dict of int64 tensors on the device
    read_starts: list = field(default_factory=list)
    read_rows: list = field(default_factory=list)  # per read: [L, width] rows of its windows (small plans), or None
    weights: dict = field(default_factory=dict)  # local id -> convolution weight as a GEMM operand
    order_src: int = None        # local whose window starts order the chunks (the dense source)
    signature: tuple = ()
    full_macs: int = 0           # multiply-adds of one full forward pass (naive ISM, per mutant)
    full_values: int = 0         # numbers one full forward pass computes (naive ISM, per mutant)
    costs: tuple = ()            # (ops_per_chunk, macs_per_mutant, values_per_mutant, graph nodes): cost model
    window: tuple = None         # (the last window, its _window_cache): reused while the same window comes
    schedules: dict = field(default_factory=dict)   # _schedule's cache: positions -> _Schedule
    calls: dict = field(default_factory=dict)       # _call_plan's cache: substitutions -> _CallPlan
    steps: list = None           # _replay_steps: the replayed nodes, how each runs
    live_all: bool = None        # every position can change the output
    reductions: list = field(default_factory=list)  # _Reduce

    def values_per_mutant(self):
        """The largest activation one mutant carries: a local change window, or a whole
        activation that layers run in full read (numbers)."""
        frontier_full = {self.node_local[a] for n in self.replay for a in _node_inputs(n)
                         if a in self.node_local and not (n.op == "call_method" and n.target == "size")}
        sizes = [loc.width * loc.c for loc in self.locals]
        sizes += [self.locals[i].length * self.locals[i].c for i in frontier_full]
        sizes += [d.linear.out_features for d in self.dense]
        return max(sizes)

    def describe(self):
        parts = []
        for loc in self.locals:
            if loc.op in ("conv", "pool"):
                parts.append(f"{loc.kind}{'(delta)' if loc.delta else ''}[{loc.width}]")
            elif loc.op in ("binary", "crop", "cat"):
                parts.append(f"{loc.kind or loc.op}[{loc.width}]")
        for d in self.dense:
            s = self.locals[d.src]
            parts.append(f"dense {s.c}x{s.length}->{d.linear.out_features}")
        for r in self.reductions:
            parts.append(f"{r.kind}[{self.locals[r.src].width}]")
        full = [n for n in self.replay if n.op in ("call_module", "call_function", "call_method")
                and not (n.op == "call_method" and n.target == "size")
                and not isinstance(self.modules.get(n.target) if n.op == "call_module" else None,
                                   _DROPOUTS + (nn.Identity,))]
        if full:
            parts.append(f"full: {len(full)} operations")
        return " -> ".join(parts)

    def widths(self):
        """The window widths of the convolution and pooling layers, in forward order."""
        return [loc.width for loc in self.locals if loc.op in ("conv", "pool")]

    def ops_per_chunk(self):
        """Torch operations one chunk of mutants runs besides its dense-layer GEMMs (a count for
        the cost model: on small models each costs more than its arithmetic)."""
        ops = {"input": 3, "alias": 0, "pool": 9, "pointwise": 2, "shift": 1, "binary": 5, "crop": 4,
               "channels": 1}
        total = 0
        for loc in self.locals:
            if loc.op == "conv":
                total += loc.k + 4 if loc.delta and loc.groups == 1 else 6
            elif loc.op == "cat":
                total += 3 * len(loc.src) + 1
            else:
                total += ops[loc.op]
        frontier = {self.node_local[a] for n in self.replay for a in _node_inputs(n) if a in self.node_local}
        return total + len(self.replay) + 5 * len(frontier) + 3 * len(self.reductions) + 6

    def numbers_per_mutant(self):
        """Numbers one mutant's incremental computation writes: its change windows, the whole
        activations that layers run in full read or the output is (each written ``SPLICE_PASSES``
        times: the reference copied, the change added, the layout and the result copied), and what
        the dense layers compute."""
        total = sum(loc.width * loc.c for loc in self.locals if loc.op != "alias")
        frontier = {self.node_local[a] for n in self.replay for a in _node_inputs(n)
                    if a in self.node_local and not (n.op == "call_method" and n.target == "size")}
        if self.output in self.node_local:
            frontier.add(self.node_local[self.output])
        total += SPLICE_PASSES * sum(self.locals[i].length * self.locals[i].c for i in frontier)
        return total + sum(d.linear.out_features for d in self.dense)

    def macs_per_mutant(self):
        """Multiply-adds of one mutant's incremental computation (local convolutions, the first
        dense layers and the dense layers run in full)."""
        total = 0
        for loc in self.locals:
            if loc.op == "conv":
                per_tap = self.locals[loc.src[0]].c // loc.groups * loc.c * loc.k
                total += per_tap * (self.locals[loc.src[0]].width if loc.delta else loc.width)
        for d in self.dense:
            s = self.locals[d.src]
            total += s.width * s.c * d.linear.out_features
        for n in self.replay:
            m = self.modules.get(n.target) if n.op == "call_module" else None
            if isinstance(m, nn.Linear):
                total += m.in_features * m.out_features
        return total


def _full_macs(graph, modules, values):
    """Multiply-adds of one full forward pass on batch 1: its convolutions and linear layers."""
    total = 0
    for n in graph.nodes:
        m = modules.get(n.target) if n.op == "call_module" else None
        out = values.get(n)
        if isinstance(m, _CONVS) and isinstance(out, torch.Tensor):
            total += out.numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear) and isinstance(out, torch.Tensor):
            total += out.numel() * m.in_features
    return total


# the cost model that picks naive ISM where fast ISM would be slower (deterministic: a function of
# the plan and the substitutions): seconds per multiply-add, per number written (``number``: by
# the incremental path's small operations; ``naive_number``: by whole layers) and per torch
# operation of each kind of device, measured on this project's CPU (tangermeme's toy models,
# 1 thread: the small convolutions of naive ISM reach ~4 G multiply-adds/s) and GPU machines;
# ``op_scale``: torch operations dispatched per operation the plan counts (incremental, naive)
COST = {"cpu": {"mac": 2.5e-10, "number": 1e-9, "naive_number": 3e-10, "op": 1.5e-5, "op_scale": (1, 3)},
        "cuda": {"mac": 1 / 2e13, "number": 1e-12, "naive_number": 1e-12, "op": 1.5e-5, "op_scale": (1, 3)}}
SPLICE_PASSES = 2
FIXED_OPS = 5      # operations of an incremental call besides its chunks' (the schedule, the window's check)


def estimated_seconds(plan, n_mutants, n_chunks, n_dense_groups, batch_size, device):
    """``(incremental, naive)`` seconds the cost model expects for ``n_mutants`` of one window."""
    cost = COST.get(torch.device(device).type, COST["cuda"])
    if not plan.costs:
        plan.costs = (plan.ops_per_chunk(), plan.macs_per_mutant(), plan.numbers_per_mutant(), len(plan.graph.nodes))
    ops_per_chunk, macs, numbers, n_nodes = plan.costs
    fast_scale, naive_scale = cost["op_scale"]
    fast_ops = fast_scale * (n_chunks * ops_per_chunk + 2 * n_dense_groups) + FIXED_OPS
    fast = n_mutants * (macs * cost["mac"] + numbers * cost["number"]) + fast_ops * cost["op"]
    naive_ops = naive_scale * -(-n_mutants // max(1, int(batch_size))) * (n_nodes + 4)
    naive = n_mutants * (plan.full_macs * cost["mac"] + plan.full_values * cost["naive_number"]) \
        + naive_ops * cost["op"]
    return fast, naive


def _state_signature(model, modules=None):
    """Changes when a module's mode changes or a parameter or buffer is replaced, moved or
    modified in place (one walk over the modules; ``modules``: ``list(model.modules())`` when the
    caller has it)."""
    sig = []
    for m in model.modules() if modules is None else modules:
        sig.append(m.training)
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None:
                    sig.append((t.data_ptr(), t._version, t.device, t.dtype))
    return tuple(sig)


def _describe(value):
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _node_inputs(node):
    """The fx Nodes among a node's args and kwargs."""
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _channel_major(fn, four_d):
    """``fn`` on ``[N, C, W]`` (``[N, C, 1, W]`` if ``four_d``) -> the same on position-major
    windows ``[N, W, C]`` (views only: element-wise results keep their input's layout)."""
    if four_d:
        return lambda x: fn(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
    return lambda x: fn(x.transpose(1, 2)).transpose(1, 2)


def _bind(fn, args, kwargs, four_d):
    """Windows ``[N, W, C]`` -> ``fn(*args, **kwargs)`` with the one node left in them (the local
    input; the others are already constants) replaced by the windows, in the node's own layout."""
    def call(x):
        a, kw = fx.node.map_arg((args, kwargs), lambda n: x)
        return fn(*a, **kw)
    return _channel_major(call, four_d)


def _mutates(n, modules):
    """Whether a node may change a value in place (``x.add_(...)``, ``inplace=True``, ``x += y``)."""
    if n.kwargs.get("inplace"):
        return True
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    if n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        return name.startswith("i") and getattr(operator, name, None) is n.target or name.endswith("_")
    return n.op == "call_module" and bool(getattr(modules.get(n.target), "inplace", False))


def _prune(graph, modules):
    """Drop the nodes the output does not need (a head a tuple's selection left unused), unless
    one of them might change another value in place."""
    output = next(n for n in graph.nodes if n.op == "output")
    needed, stack = set(), [output]
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(_node_inputs(n))
    dead = [n for n in graph.nodes if n not in needed and n.op != "placeholder"]
    if any(_mutates(n, modules) for n in dead):
        return
    for n in reversed(dead):
        graph.erase_node(n)


def _is_flatten(n, shape_in):
    """Whether node ``n`` flattens its input ``[1, C, (1,) l]`` to ``[1, C * l]``."""
    if n.op == "call_function" and n.target is torch.flatten or n.op == "call_method" and n.target == "flatten":
        rest = list(n.args[1:])
        start = rest[0] if rest else n.kwargs.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else n.kwargs.get("end_dim", -1)
        return start == 1 and end in (-1, len(shape_in) - 1)
    if n.op == "call_method" and n.target in ("view", "reshape"):
        dims = n.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if len(dims) != 2 or not isinstance(dims[0], fx.Node) or dims[1] not in (-1, int(np.prod(shape_in[1:]))):
            return False
        b = dims[0]
        return b.op == "call_method" and b.target == "size" and b.args[1:] == (0,)
    return False


class _Analyser:
    def __init__(self, model, length):
        self.model, self.length = model, length
        try:
            captured = capture(model, length, _leaf_types())
        except CaptureError as err:
            raise Unsupported(f"its forward cannot be captured ({err})")
        self.graph, self.values = captured.graph, captured.values
        _prune(self.graph, dict(model.named_modules()))
        self.modules = dict(model.named_modules())
        self.locals, self.node_local, self.dense, self.replay, self.static = [], {}, [], [], {}
        self.reductions = []
        self.depends = set()                    # nodes that depend on the input

    def new_local(self, n, op, src, c, length, **kw):
        shape = tuple(self.values[n].shape)
        loc = _Local(len(self.locals), op, n.name, c, length, shape, list(src), **kw)
        self.locals.append(loc)
        self.node_local[n] = loc.id
        return loc

    def loc(self, n):
        return self.locals[self.node_local[n]]

    def run(self):
        nodes = list(self.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            names = ", ".join(n.target for n in placeholders[1:])
            raise Unsupported(f"forward takes more than the window ({names}): call it through "
                              "seqmux.ism.predict_substitutions, which binds args= and kwargs=")
        for name, m in self.model.named_modules():
            if isinstance(m, _DROPOUTS + _NORMS) and m.training:
                raise Unsupported(f"layer {name} ({type(m).__name__}) is in training mode")
            if isinstance(m, _NORMS) and m.running_mean is None:
                raise Unsupported(f"layer {name} ({type(m).__name__}) has no running statistics")
        output = None
        for n in nodes:
            if n.op == "output":
                output = n
                break
            if n.op == "placeholder":
                self.depends.add(n)
                self.new_local(n, "input", [], 4, self.length)
                continue
            if not any(a in self.depends for a in _node_inputs(n)):
                self.static[n] = self.values[n]
                continue
            self.depends.add(n)
            if not self.try_local(n) and not any(d.node is n for d in self.dense) \
                    and not any(r.node is n for r in self.reductions):
                self.replay.append(n)
        if output is None or not isinstance(output.args[0], fx.Node):
            raise Unsupported("forward does not return one tensor")
        value = self.values[output.args[0]]
        if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != 1:
            raise Unsupported(f"forward returns {_describe(value)}, not one [batch, ...] tensor")
        self.output = output.args[0]
        # a local activation read by a layer run in full is the frontier of the local part
        if not any(loc.op in ("conv", "pool") for loc in self.locals) and not self.dense and not self.reductions:
            first = self.replay[0].name if self.replay else "the output"
            raise Unsupported(f"no position-local layer before {first}")
        return self.finish()

    # ---- rules

    def try_local(self, n):
        """Make ``n`` local (or a first dense layer) if a rule covers it; ``False`` otherwise."""
        if n.op == "call_method" and n.target == "size":
            return False                      # the batch size: computed in full (it is N)
        # the batch size of a local activation (as in a flatten's x.view(x.size(0), -1)) is no input
        ins = [a for a in _node_inputs(n) if a in self.depends
               and not (a.op == "call_method" and a.target == "size" and a.args[0] in self.node_local)]
        loc_ins = [a for a in ins if a in self.node_local]
        if len(loc_ins) != len(ins) or not loc_ins:
            return False
        value = self.values[n]
        if not isinstance(value, torch.Tensor):
            return False
        src = self.loc(loc_ins[0])
        four_d = len(src.shape) == 4 and not src.flat
        shape_in = src.shape
        if src.hw and not (n.op == "call_module" and isinstance(self.modules[n.target], nn.Conv2d)):
            return False                      # [B, 1, C, l]: a Conv2d over the channels reads it, else in full
        if n.op == "call_module":
            m = self.modules[n.target]
            if len(loc_ins) != 1 or len(n.args) != 1 or n.kwargs:
                return False
            if isinstance(m, _DROPOUTS) or isinstance(m, nn.Identity):
                self.node_local[n] = src.id
                return True
            if isinstance(m, nn.Flatten) or (type(m).__name__ == "Flatten" and type(m).__module__ == "seqmux.models"):
                if src.flat:
                    self.node_local[n] = src.id
                    return True
                if isinstance(m, nn.Flatten) and not (m.start_dim == 1 and m.end_dim in (-1, len(shape_in) - 1)):
                    return False
                return self.flatten(n, src)
            if isinstance(m, nn.Linear):
                if not src.flat or m.in_features != src.c * src.length:
                    return False
                self.dense.append(_Dense(n, src.id, m))
                return False                  # its output is computed by the sparse update
            if isinstance(m, _ACTIVATIONS) or isinstance(m, nn.PReLU) and m.num_parameters == 1:
                return self.pointwise(n, src, m, relu=type(m) is nn.ReLU)     # any layout
            if isinstance(m, (nn.PReLU,) + _NORMS):
                nf = m.num_parameters if isinstance(m, nn.PReLU) else m.num_features
                want = 4 if isinstance(m, nn.BatchNorm2d) else 3
                if src.flat or nf != src.c or isinstance(m, _NORMS) and len(shape_in) != want:
                    return False
                return self.pointwise(n, src, _channel_major(m, four_d))
            if isinstance(m, _CONVS):
                return not src.flat and self.conv(n, src, m)
            if isinstance(m, _POOLS):
                return not src.flat and self.pool(n, src, m)
            return False
        if n.op not in ("call_function", "call_method"):
            return False
        if len(loc_ins) == 1 and self.reduction(n, src, loc_ins[0], value):
            return False                      # its output is computed from the change's sum
        target = n.target
        name = target if n.op == "call_method" else getattr(target, "__name__", str(target))
        fn = getattr(torch.Tensor, target, None) if n.op == "call_method" else target
        if n.op == "call_method" and (target.endswith("_") and not target.endswith("__")) or \
                n.op == "call_function" and name.startswith("i") and getattr(operator, name, None) is target:
            return False                      # in-place: run in full
        if len(loc_ins) == 1 and n.op == "call_method" and target in _NO_OP_METHODS and len(n.args) == 1 \
                and not n.kwargs and value.dtype == self.values[loc_ins[0]].dtype:
            self.node_local[n] = src.id
            return True
        if _is_flatten(n, shape_in):
            if src.flat:
                self.node_local[n] = src.id
                return True
            return self.flatten(n, src)
        if (n.op == "call_method" and target in ("unsqueeze", "squeeze")) or \
                (n.op == "call_function" and target in (torch.unsqueeze, torch.squeeze)):
            rest = [a for a in n.args if a is not loc_ins[0]]
            dim = rest[0] if rest else n.kwargs.get("dim")
            if target in ("unsqueeze", torch.unsqueeze) and dim in (1, -3) and len(shape_in) == 3 \
                    and not src.flat and len(loc_ins) == 1:
                self.view(n, src).hw = True   # [B, 1, C, l], for a Conv2d whose kernel spans the C rows
                return True
            ok = not src.flat and (target in ("unsqueeze", torch.unsqueeze) and len(shape_in) == 3
                                   or target in ("squeeze", torch.squeeze) and len(shape_in) == 4) \
                and dim in (2, -2) and len(loc_ins) == 1
            return ok and self.view(n, src)
        if n.op == "call_function" and target is torch.cat:
            return self.cat(n, loc_ins)
        if n.op == "call_function" and target is operator.getitem and len(loc_ins) == 1:
            return not src.flat and self.crop(n, src)
        if n.op == "call_function" and target is F.dropout:
            training = n.kwargs.get("training", n.args[2] if len(n.args) > 2 else True)
            if training:
                raise Unsupported(f"{n.name}: dropout in training mode")
            self.node_local[n] = src.id
            return True
        binary = _BINARY.get(target) if n.op == "call_function" else _BINARY_METHODS.get(target)
        if binary is not None and len(n.args) == 2 and not n.kwargs:
            return self.binary(n, binary, loc_ins)
        if len(loc_ins) == 1 and ((n.op == "call_function" and target in _UNARY_FUNCTIONS)
                                  or (n.op == "call_method" and target in _UNARY_METHODS)):
            if tuple(value.shape) != tuple(src.shape):
                return False
            return self.pointwise(n, src, self.bound(fn, n, loc_ins[0], four_d),
                                  relu=target in (torch.relu, F.relu, "relu") and len(n.args) == 1 and not n.kwargs)
        return False

    def reduction(self, n, src, cur, value):
        """``x.mean(-1)`` / ``x.sum(-1)`` (``torch.mean``, ``torch.sum``; ``dim`` -1 or 2, with or
        without keepdim) of a ``[1, C, l]`` local activation: a ``_Reduce``."""
        kind = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
        if kind not in ("mean", "sum") or (n.op == "call_function" and n.target not in (torch.mean, torch.sum)):
            return False
        if src.flat or src.hw or len(src.shape) != 3 or not n.args or n.args[0] is not cur:
            return False
        if set(n.kwargs) - {"dim", "keepdim"} or len(n.args) > 3:
            return False
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keepdim = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        if isinstance(dim, (list, tuple)) and len(dim) == 1:
            dim = dim[0]
        want = (1, src.c, 1) if keepdim else (1, src.c)
        if dim not in (-1, 2) or not isinstance(keepdim, bool) or tuple(value.shape) != want \
                or value.dtype != self.values[cur].dtype:
            return False
        self.reductions.append(_Reduce(n, src.id, kind, src.length))
        return True

    def bound(self, fn, n, cur, four_d):
        static = self.static
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a if a is cur else static[a])
        return _bind(fn, args, kwargs, four_d)

    def view(self, n, src):
        """``unsqueeze(2)`` / ``squeeze(2)`` (``unsqueeze(1)``): the same activation with another shape."""
        return self.new_local(n, "alias", [src.id], src.c, src.length)

    def cat(self, n, loc_ins):
        """``torch.cat`` of local activations along the channels: each source's change is read
        over the union of their windows (as a residual addition's), then they are stacked."""
        parts = n.args[0] if n.args else n.kwargs.get("tensors")
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(parts, (list, tuple)) or any(p not in self.node_local for p in parts):
            return False
        srcs = [self.loc(p) for p in parts]
        shape = srcs[0].shape
        if any(s.flat or s.hw or len(s.shape) != len(shape) or s.shape[2:] != shape[2:] for s in srcs) \
                or len(shape) not in (3, 4) or dim not in (1, 1 - len(shape)):
            return False
        c = sum(s.c for s in srcs)
        if tuple(self.values[n].shape) != (shape[0], c) + tuple(shape[2:]):
            return False
        self.new_local(n, "cat", [s.id for s in srcs], c, srcs[0].length, kind="cat")
        return True

    def flatten(self, n, src):
        loc = self.new_local(n, "alias", [src.id], src.c, src.length)
        loc.flat = True
        return True

    def pointwise(self, n, src, fn, relu=False):
        if tuple(self.values[n].shape) != tuple(src.shape):
            return False
        loc = self.new_local(n, "pointwise", [src.id], src.c, src.length, fn=fn, relu=relu)
        loc.flat = src.flat
        return True

    def conv(self, n, src, m):
        shape = src.shape
        if src.hw:
            return self.conv_over_bases(n, src, m)
        if isinstance(m, nn.Conv2d):
            if len(shape) != 4:
                return False
            kh, k = m.kernel_size
            sh, s = m.stride
            dh, d = m.dilation
            ph = 0 if isinstance(m.padding, str) else m.padding[0]
            if kh != 1 or sh != 1 or dh != 1 or ph != 0:
                return False
            weight = lambda: m.weight[:, :, 0, :]  # noqa: E731
        else:
            if len(shape) != 3:
                return False
            k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
            weight = lambda: m.weight  # noqa: E731
        if m.padding_mode != "zeros" or m.in_channels != src.c:
            return False
        if m.padding == "valid":
            pl = 0
        elif m.padding == "same":
            pl = d * (k - 1) // 2
        else:
            pl = m.padding[-1]
        out = self.values[n]
        self.new_local(n, "conv", [src.id], out.shape[1], out.shape[-1], fn=weight, kind="conv", k=k, s=s, d=d,
                       pl=pl, groups=m.groups, delta=s == 1)
        return True

    def conv_over_bases(self, n, src, m):
        """A ``Conv2d(1, C', (C, k))`` on ``[B, 1, C, l]``: a ``Conv1d(C, C', k)``, output
        ``[B, C', 1, l']``."""
        kh, k = m.kernel_size
        sh, s = m.stride
        dh, d = m.dilation
        out = self.values[n]
        if isinstance(m.padding, str):
            pl = 0 if m.padding == "valid" else d * (k - 1) // 2
        else:
            pl = m.padding[1]
        if m.in_channels != 1 or kh != src.c or dh != 1 or m.groups != 1 or m.padding_mode != "zeros" \
                or out.dim() != 4 or out.shape[2] != 1 or (not isinstance(m.padding, str) and m.padding[0]):
            return False
        weight = lambda: m.weight[:, 0]  # noqa: E731
        self.new_local(n, "conv", [src.id], out.shape[1], out.shape[-1], fn=weight, kind="conv", k=k, s=s, d=d,
                       pl=pl, groups=1, delta=s == 1)
        return True

    def pool(self, n, src, m):
        two_d = isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))
        if two_d != (len(src.shape) == 4) or m.ceil_mode:
            return False
        stride = m.stride if m.stride is not None and m.stride != () else m.kernel_size
        if two_d:
            kh, k = _pair(m.kernel_size, "kernel_size")
            sh, s = _pair(stride, "stride")
            ph, p = _pair(m.padding, "padding")
            if kh != 1 or sh != 1 or ph != 0:
                return False
        else:
            k, s, p = _single(m.kernel_size), _single(stride), _single(m.padding)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            dh, d = _pair(m.dilation, "dilation") if two_d else (1, _single(m.dilation))
            if m.return_indices or dh != 1:
                return False
            kind, pad_value = "maxpool", float("-inf")
        else:
            if p and not m.count_include_pad or getattr(m, "divisor_override", None):
                return False
            d, kind, pad_value = 1, "avgpool", 0.0
        out = self.values[n]
        self.new_local(n, "pool", [src.id], src.c, out.shape[-1], kind=kind, k=k, s=s, d=d, pl=p,
                       pad_value=pad_value)
        return True

    def crop(self, n, src):
        index = n.args[1]
        if not isinstance(index, tuple):
            return False
        index = list(index)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + [slice(None)] * (len(src.shape) - len(index) + 1) + index[at + 1:]
        index += [slice(None)] * (len(src.shape) - len(index))
        if len(index) != len(src.shape) or any(not isinstance(i, slice) for i in index):
            return False
        if index[0] == slice(None) and all(i == slice(None) for i in index[2:]) and index[1] != slice(None) \
                and (len(src.shape) == 3 or index[2] == slice(None)):
            c0, c1, step = index[1].indices(src.c)             # a range of channels
            if step != 1 or c1 <= c0:
                return False
            self.new_local(n, "channels", [src.id], c1 - c0, src.length, kind="channels", k=c0)
            return True
        if any(i != slice(None) for i in index[:-1]):
            return False
        start, stop, step = index[-1].indices(src.length)
        if step != 1 or stop <= start:
            return False
        self.new_local(n, "crop", [src.id], src.c, stop - start, kind="crop", pl=-start)
        return True

    def binary(self, n, kind, loc_ins):
        a, b = n.args
        value = self.values[n]
        if len(loc_ins) == 2 or a is b:
            la, lb = self.loc(a), self.loc(b)
            if la.flat or lb.flat or la.shape != lb.shape or tuple(value.shape) != la.shape:
                return False
            self.new_local(n, "binary", [la.id, lb.id], la.c, la.length, fn=_BINARY_FN[kind], kind=kind)
            return True
        cur = loc_ins[0]
        src = self.loc(cur)
        other = b if a is cur else a
        const = self.static.get(other, other) if isinstance(other, fx.Node) else other
        if tuple(value.shape) != tuple(src.shape):
            return False
        if isinstance(const, torch.Tensor) and const.dim() and const.shape[-1] != 1 and kind not in ("add", "sub"):
            return False              # varies along the length: not element-wise on windows
        if isinstance(const, torch.Tensor) and const.dim() and src.flat:
            return False
        if kind in ("add", "sub") and not (kind == "sub" and a is not cur):
            # x + c, x - c: the change passes unchanged (a constant along the length cancels too)
            self.new_local(n, "shift", [src.id], src.c, src.length).flat = src.flat
            return True
        four_d = len(src.shape) == 4 and not src.flat
        if isinstance(const, torch.Tensor) and const.dim() == len(src.shape) and four_d:
            const = const.squeeze(2)
        fn = _BINARY_FN[kind]
        call = (lambda x: fn(x, const)) if a is cur else (lambda x: fn(const, x))
        return self.pointwise(n, src, _channel_major(call, False))

    # ---- geometry

    def finish(self):
        locs = self.locals
        L = self.length
        frontier = set()
        for node in self.replay:
            for a in _node_inputs(node):
                if a in self.node_local and not (node.op == "call_method" and node.target == "size"):
                    frontier.add(self.node_local[a])
        for d in self.dense:
            frontier.add(d.src)
        for r in self.reductions:
            frontier.add(r.src)
        if self.output in self.node_local:
            frontier.add(self.node_local[self.output])
        for loc in locs:
            for s in loc.src:
                locs[s].consumers += 1
                locs[s].last = loc.id
        for i in frontier:
            locs[i].consumers += 1
            locs[i].keep = True
        for loc in reversed(locs):            # a view shares its source's change: so does its use
            if loc.op == "alias":
                root = locs[loc.src[0]]
                root.last, root.keep = max(root.last, loc.last), root.keep or loc.keep
        reads = []
        for loc in locs:
            _geometry(loc, locs, L)
        live = np.zeros(L, dtype=bool)
        for i in frontier:
            live |= locs[i].hi > locs[i].lo
        self.live = live
        use = live if live.any() else np.ones(L, dtype=bool)
        for loc in locs:
            if loc.op == "pointwise":
                s, single = locs[loc.src[0]], True
                while s.op == "alias":           # a view of an element-wise layer keeps its pair
                    single = single and s.consumers == 1
                    s = locs[s.src[0]]
                loc.pair_in = s.op == "pointwise"
                loc.in_place = loc.pair_in and single and s.consumers == 1
                s = locs[loc.src[0]]
                if not loc.pair_in:
                    loc.reads = [_add_read(reads, s, loc.st, loc.width, 0.0, use)]
            elif loc.op == "pool" and loc.kind == "maxpool":
                s = locs[loc.src[0]]
                loc.reads = [_add_read(reads, s, loc.st * loc.s - loc.pl, loc.w_in, loc.pad_value, use)]
            elif loc.op == "binary" and loc.kind not in ("add", "sub"):
                loc.reads = [_add_read(reads, locs[s], loc.st, loc.width, 0.0, use) for s in loc.src]
        plan = Plan(L, self.graph, self.modules, locs, self.node_local, self.dense, self.replay, self.static,
                    self.output, reads, live)
        plan.order_src = self.dense[0].src if self.dense else None
        plan.reductions = self.reductions
        plan.full_macs = _full_macs(self.graph, self.modules, self.values)
        plan.full_values = sum(v.numel() for n, v in self.values.items()
                               if n in self.depends and isinstance(v, torch.Tensor))
        return plan


def _add_read(reads, src, starts, width, pad_value, use):
    """Register a read of ``src``'s reference over ``[starts[p], starts[p] + width)``: index."""
    s = starts[use]
    margins = (max(0, -int(s.min())), max(0, int((s + width).max()) - src.length))
    reads.append((src.id, starts, width, pad_value, margins))
    return len(reads) - 1


def _geometry(loc, locs, L):
    """Window and changed range of ``loc`` for every substituted position, from its sources'."""
    if loc.op == "input":
        loc.lo = np.arange(L, dtype=np.int64)
        loc.hi = loc.lo + 1
        loc.st, loc.width = loc.lo.copy(), 1
        return
    src = [locs[s] for s in loc.src]
    s0 = src[0]
    if loc.op in ("alias", "pointwise", "shift", "channels"):
        loc.st, loc.width, loc.lo, loc.hi = s0.st, s0.width, s0.lo, s0.hi
        return
    if loc.op in ("conv", "pool"):
        ext = (loc.k - 1) * loc.d
        lo, hi = s0.lo, s0.hi
        new_lo = np.maximum(-((ext - lo - loc.pl) // loc.s), 0)          # ceil((lo + pl - ext) / s)
        new_hi = np.minimum((hi - 1 + loc.pl) // loc.s + 1, loc.length)
        empty = (hi <= lo) | (new_hi <= new_lo)
        loc.lo, loc.hi = np.where(empty, 0, new_lo), np.where(empty, 0, new_hi)
        direct = int(max(1, min(loc.length, (loc.hi - loc.lo).max(initial=1))))
        if loc.op == "conv" and loc.s == 1:
            # cheaper of: transposed convolution of the change (its window grows by the kernel's
            # extent) or recomputing the affected outputs (when that is narrower)
            loc.delta = s0.width < direct
        if loc.delta:
            loc.st, loc.width = s0.st + loc.pl - ext, s0.width + ext
        else:
            loc.width = direct
            loc.st = np.clip(loc.lo, 0, loc.length - direct)
            loc.w_in = (direct - 1) * loc.s + ext + 1
            loc.rel = [loc.st * loc.s - loc.pl - s0.st]
        return
    if loc.op == "crop":
        shift = -loc.pl                        # the crop's first position in the source
        lo, hi = np.maximum(s0.lo - shift, 0), np.minimum(s0.hi - shift, loc.length)
        empty = hi <= lo
        loc.lo, loc.hi = np.where(empty, 0, lo), np.where(empty, 0, hi)
        loc.width = min(s0.width, loc.length)
        loc.st = np.clip(s0.st - shift, 0, loc.length - loc.width) if loc.width < s0.width else s0.st - shift
        loc.w_in = loc.width
        loc.rel = [loc.st + shift - s0.st]
        return
    if loc.op in ("binary", "cat"):
        some = [s.hi > s.lo for s in src]
        big = np.iinfo(np.int64).max
        lo = np.min([np.where(k, s.lo, big) for s, k in zip(src, some)], axis=0)
        hi = np.max([np.where(k, s.hi, 0) for s, k in zip(src, some)], axis=0)
        empty = hi <= lo
        loc.lo, loc.hi = np.where(empty, 0, lo), np.where(empty, 0, hi)
        st = np.min([s.st for s in src], axis=0)
        width = int((np.max([s.st + s.width for s in src], axis=0) - st).max())
        if width >= loc.length:
            st, width = np.zeros(L, dtype=np.int64), loc.length
        loc.st, loc.width, loc.w_in = st, width, width
        loc.rel = [st - s.st for s in src]
        return
    raise AssertionError(loc.op)


def analyse(model, length):
    """The incremental-ISM ``Plan`` of ``model`` for one-hot inputs ``[B, 4, length]``.

    Raises ``Unsupported`` (with the reason) for models it cannot handle.
    """
    if not isinstance(model, nn.Module):
        raise Unsupported("not an nn.Module")
    return _Analyser(model, length).run()


# ---------------------------------------------------------------------------------------------
# plan cache

_PLANS = weakref.WeakKeyDictionary()   # model -> {length: (signature, Plan or reason string)}
_REPORTED = weakref.WeakKeyDictionary()


TABLE_ENTRIES = 1 << 20   # index tables [L, width] kept per plan up to this size (fewer ops per chunk)


def get_plan(model, length, state=None):
    """The cached ``Plan`` of ``model`` for windows of ``length`` (tables and derived weights on
    the model's device), or the reason string why it cannot be analysed. ``state``: the model's
    ``_state_signature`` when the caller has just computed it."""
    sig = _state_signature(model) if state is None else state
    per_model = _PLANS.setdefault(model, {})
    entry = per_model.get(length)
    if entry is not None and entry[0] == sig:
        return entry[1]
    try:
        plan = analyse(model, length)
        plan.signature = sig
        param = next(iter(list(model.parameters()) + list(model.buffers())), None)
        dev = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            for loc in plan.locals:
                tab = {"st": torch.as_tensor(loc.st, device=dev)}
                for j, rel in enumerate(loc.rel):
                    tab[f"rel{j}"] = torch.as_tensor(rel, device=dev)
                    w_src = plan.locals[loc.src[j]].width
                    idx = rel[:, None] + np.arange(loc.w_in)
                    if idx.size <= TABLE_ENTRIES:   # the rows each position's read takes, and the ones outside
                        tab[f"rows{j}"] = (w_src, torch.as_tensor(np.clip(idx, 0, w_src - 1), device=dev))
                        outside = (idx < 0) | (idx >= w_src)
                        if outside.any():
                            tab[f"clip{j}"] = torch.as_tensor(outside, device=dev)[:, :, None]
                cols = loc.st[:, None] + np.arange(loc.width)
                if cols.size <= TABLE_ENTRIES and ((cols < 0) | (cols >= loc.length)).any():
                    tab["outside"] = torch.as_tensor((cols < 0) | (cols >= loc.length), device=dev)[:, :, None]
                plan.tables.append(tab)
                if loc.op == "conv":
                    plan.weights[loc.id] = _conv_operand(loc.fn().detach(), loc.groups, loc.delta)
                    if loc.delta and loc.groups == 1 and loc.d == 1 and plan.locals[loc.src[0]].width == 1:
                        # a change one position wide: its transposed convolution is one GEMM with
                        # the taps in reverse order ([C, k C'], output position j takes tap k - 1 - j)
                        w = plan.weights[loc.id]
                        plan.weights[("reversed", loc.id)] = w.view(w.shape[0], loc.k, -1).flip(1).reshape(
                            w.shape[0], -1).contiguous()
            for _, starts, width, _, margins in plan.reads:
                plan.read_starts.append(torch.as_tensor(starts + margins[0], device=dev))
                rows = (starts + margins[0])[:, None] + np.arange(width)
                plan.read_rows.append(torch.as_tensor(rows, device=dev) if rows.size <= TABLE_ENTRIES else None)
            for d in plan.dense:
                s = plan.locals[d.src]
                w = d.linear.weight.detach()
                h = w.shape[0]
                # columns position-major (p * C + c): one window's columns are one contiguous block
                d.weight_pm = w.reshape(h, s.c, s.length).transpose(1, 2).reshape(h, s.length * s.c).contiguous()
        result = plan
    except Unsupported as err:
        result = str(err)
    per_model[length] = (sig, result)
    return result


def _conv_operand(w, groups, delta):
    """A convolution weight ``[C', C/g, k]`` as the operand of its GEMM: ``[C, k * C']`` (tap
    major: each input position's products with every tap, for a transposed convolution) or
    ``[C * k, C']`` (an unfolded input window times the weight, for a direct one); with groups,
    the ``conv_transpose1d`` weight ``[C, C'/g, k]`` (taps reversed) or the weight itself."""
    co, ci, k = w.shape
    if groups > 1:
        if not delta:
            return w.contiguous()
        wt = w.reshape(groups, co // groups, ci, k).transpose(1, 2).reshape(groups * ci, co // groups, k)
        return wt.flip(2).contiguous()
    if delta:
        return w.permute(1, 2, 0).reshape(ci, k * co).contiguous()
    return w.permute(1, 2, 0).reshape(ci * k, co).contiguous()


def analysable(model, length):
    """``(True, description)`` when fast ISM handles ``model`` on windows of ``length``, else
    ``(False, reason)``."""
    plan = get_plan(model, length)
    if isinstance(plan, Plan):
        return True, plan.describe()
    return False, plan


# ---------------------------------------------------------------------------------------------
# the incremental computation

def _call(plan, node, env):
    """Run one graph node on the values in ``env`` (a module that works in place gets a copy)."""
    if not node.kwargs and not any(isinstance(a, (tuple, list, dict, slice)) for a in node.args):
        # flat arguments (most nodes): no map_arg
        args = tuple(env[a] if isinstance(a, fx.Node) else a for a in node.args)
        kwargs = {}
    else:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
    if node.op == "call_module":
        m = plan.modules[node.target]
        if getattr(m, "inplace", False) and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(),) + tuple(args[1:])
        return m(*args, **kwargs)
    if kwargs.get("inplace") and args and isinstance(args[0], torch.Tensor):
        args = (args[0].clone(),) + tuple(args[1:])
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _reference(plan, onehot):
    """Every node's value on the window ``onehot [4, L]`` (batch 1), following the graph."""
    env = dict(plan.static)
    for node in plan.graph.nodes:
        if node.op == "placeholder":
            env[node] = onehot.unsqueeze(0)
        elif node.op == "output":
            break
        elif node not in env:
            env[node] = _call(plan, node, env)
    return env


def _read(plan, padded, r, pos, width):
    """The reference windows ``[N, width, C]`` of read ``r`` for the mutants at ``pos``."""
    rows = plan.read_rows[r]
    if rows is None:
        return _windows(padded[r], plan.read_starts[r][pos], width)
    return padded[r].index_select(0, rows[pos].flatten()).view(pos.shape[0], width, padded[r].shape[1])


def _windows(padded, starts, width):
    """``[N, width, C]`` windows of ``padded [Lp, C]`` starting at rows ``starts [N]``."""
    idx = (starts[:, None] + torch.arange(width, device=starts.device)).flatten()
    return padded.index_select(0, idx).view(starts.shape[0], width, padded.shape[1])


def _shifted(delta, starts, width, clip):
    """``[N, width, C]`` windows of each mutant's own ``delta [N, W, C]`` (zero outside it),
    starting at ``starts [N]`` (may be negative); ``clip``: whether some reach outside. One
    row gather (``index_select`` of whole C-vectors, far cheaper than an element-wise gather)."""
    n, w, c = delta.shape
    idx = starts[:, None] + torch.arange(width, device=delta.device)
    rows = (idx.clamp(0, w - 1) if clip else idx) + (torch.arange(n, device=delta.device) * w)[:, None]
    out = delta.reshape(n * w, c).index_select(0, rows.flatten()).view(n, width, c)
    if clip:
        out.masked_fill_(((idx < 0) | (idx >= w))[:, :, None], 0.0)
    return out


def _rel_shift(loc, j, delta, tab, pos, pos_np):
    """Source ``j``'s change read over ``loc``'s input window (``rel[j]`` into it, ``w_in`` wide)."""
    rel = loc.rel[j][pos_np]
    w = delta.shape[1]
    r = int(rel[0])
    if (rel == r).all():          # one offset for the whole chunk: a slice, zero-padded
        if r == 0 and loc.w_in == w:
            return delta
        lo, hi = max(0, -r), max(0, r + loc.w_in - w)
        return (F.pad(delta, (0, 0, lo, hi)) if lo or hi else delta).narrow(1, r + lo, loc.w_in)
    rows = tab.get(f"rows{j}")
    if rows is not None and rows[0] == w:      # the plan's row table: a gather and a mask
        n, c = delta.shape[0], delta.shape[2]
        base = tab.get(("base", w, n))
        if base is None:
            base = tab[("base", w, n)] = (torch.arange(n, device=delta.device) * w)[:, None]
        out = delta.reshape(n * w, c).index_select(0, (rows[1][pos] + base).flatten()).view(n, loc.w_in, c)
        clip = tab.get(f"clip{j}")
        return out if clip is None else out.masked_fill_(clip[pos], 0.0)
    clip = bool((rel < 0).any() or (rel + loc.w_in > w).any())
    return _shifted(delta, tab[f"rel{j}"][pos], loc.w_in, clip)


def _transposed_conv(delta, weight, loc):
    """Stride-1 convolution of a change window ``[N, W, C]`` -> ``[N, W + (k-1) d, C']``: one
    GEMM of every position with every tap, then the taps' products added at their offsets."""
    if loc.groups > 1:
        out = F.conv_transpose1d(delta.transpose(1, 2), weight, None, 1, 0, 0, loc.groups, loc.d)
        return out.transpose(1, 2).contiguous()
    n, w, c = delta.shape
    k, d = loc.k, loc.d
    co = weight.shape[1] // k
    y = (delta.reshape(n * w, c) @ weight).view(n, w, k, co)
    e = (k - 1) * d
    if k > 1 and n * (w + 2 * e) * k * co <= SMALL_SUM:
        # small: the taps summed in one reduction over a strided view of y padded by the kernel's
        # extent on both sides (output t takes tap j from padded row t + j d); 3 operations, not 3k
        z = F.pad(y, (0, 0, 0, 0, e, e))
        u = z.stride(1)
        return z.as_strided((n, w + e, k, co), (z.stride(0), u, u * d + co, 1)).sum(2)
    out = y.new_zeros(n, w + e, co)
    for j in range(k):
        out[:, (k - 1 - j) * d:(k - 1 - j) * d + w] += y[:, :, j]
    return out


SMALL_SUM = 1 << 18   # numbers of a padded tap tensor summed in one reduction (larger: tap by tap)


def _direct_conv(x, weight, loc):
    """Convolution of an input window ``[N, w_in, C]`` (stride ``s``, dilation ``d``) ->
    ``[N, W_out, C']``: the unfolded window times the weight."""
    if loc.groups > 1:
        out = F.conv1d(x.transpose(1, 2), weight, None, loc.s, 0, loc.d, loc.groups)
        return out.transpose(1, 2).contiguous()
    cols = _unfold(x, loc)                                               # [N, W_out, C, k]
    n, w_out = cols.shape[:2]
    return (cols.reshape(n * w_out, -1) @ weight).view(n, w_out, weight.shape[1])


def _unfold(x, loc):
    """The windows of a pooling or convolution layer over ``x [N, w_in, C]``: ``[N, W_out, C, k]``."""
    cols = x.unfold(1, (loc.k - 1) * loc.d + 1, loc.s)
    return cols[..., ::loc.d] if loc.d > 1 else cols


class _Change:
    """A mutant batch's change of one local activation, ``[N, C, W]``; element-wise layers keep
    the (reference, mutant) windows too, so that a run of them reads the reference once."""
    __slots__ = ("delta", "ref", "new")

    def __init__(self, delta=None, ref=None, new=None):
        self.delta, self.ref, self.new = delta, ref, new

    def get(self, last=False):
        """The change; ``last``: no one reads this activation after the caller (in place)."""
        if self.delta is None:
            self.delta = self.new.sub_(self.ref) if last else self.new - self.ref
            if last:
                self.ref = self.new = None
        return self.delta


def _cached_window(plan, onehot, reference, model):
    """``_window_cache`` of ``onehot``, reused while the same window comes again (a caller that
    splits one window's substitutions over several calls, as tangermeme's fast path reuses an
    example's activations): the plan keeps its last window (a copy) and that window's state.
    A new window's plan output is checked against the model's ``reference``: where they differ
    the model is marked not analysable (logged) and ``(None, None, None)`` returned."""
    last = plan.window
    if last is not None and last[0].shape == onehot.shape and last[0].dtype == onehot.dtype \
            and last[0].device == onehot.device and torch.equal(last[0], onehot):
        return last[1]
    state = _window_cache(plan, onehot)
    ref_out = state[0][plan.output][0]
    if ref_out.shape != reference.shape or not torch.allclose(ref_out, reference, rtol=1e-4, atol=1e-5,
                                                              equal_nan=True):
        reason = "its captured graph does not reproduce the model's output"
        _PLANS[model][plan.length] = (plan.signature, reason)
        _report(model, reason)
        return None, None, None
    plan.window = (onehot.clone(), state)
    return state


def _window_cache(plan, onehot):
    """Per window: the reference of every node, the padded reference windows the local layers
    read, every local activation as ``[l, C]`` (position-major)."""
    env = _reference(plan, onehot)
    acts = {}
    needed = {r[0] for r in plan.reads} | {loc.id for loc in plan.locals if loc.keep}
    for node, i in plan.node_local.items():
        if i not in acts and i in needed:
            acts[i] = env[node].reshape(plan.locals[i].c, plan.locals[i].length).T.contiguous()   # [l, C]
        if plan.locals[i].keep and ("cm", i) not in acts:                                          # [C, l]
            acts[("cm", i)] = env[node].reshape(plan.locals[i].c, plan.locals[i].length)
    padded = []
    for src, _, _, pad_value, margins in plan.reads:
        a = acts[src]
        padded.append(F.pad(a, (0, 0) + margins, value=pad_value) if any(margins) else a)
    # last: the input's change of each (position, base), row 4 p + b: e_b - the window's column p
    eye = torch.eye(4, dtype=onehot.dtype, device=onehot.device)
    padded.append((eye[None] - onehot.T[:, None, :]).reshape(-1, 4))
    return env, acts, padded


def _run_locals(plan, padded, onehot, pos, pos_np, alts):
    """The change ``_Change`` of every local activation for the mutants ``alts`` at ``pos``
    (those that are read after the local part; the others are dropped after their last reader).
    Changes are position-major, ``[N, W, C]``: a layer's GEMM reads them without a copy."""
    changes = [None] * len(plan.locals)
    for loc, tab in zip(plan.locals, plan.tables):
        if loc.op in ("conv", "pool", "crop", "binary", "shift", "cat", "channels"):
            _free(plan, changes, loc)
        changes[loc.id] = _local_change(plan, loc, tab, changes, padded, onehot, pos, pos_np, alts)
        for s in loc.src:
            if plan.locals[s].last == loc.id and not plan.locals[s].keep:
                changes[s] = None
    return changes


def _local_change(plan, loc, tab, changes, padded, onehot, pos, pos_np, alts):
    """The ``_Change`` of one local activation from its sources' (``changes``)."""
    op = loc.op
    if op == "input":             # [N, 1, 4]: e_alt - reference column, rows of the window's table
        return _Change(padded[-1].index_select(0, alts.add(pos, alpha=4)).unsqueeze(1))
    src = changes[loc.src[0]]
    if op == "alias":
        return src
    if op == "shift":
        return _Change(src.get())
    if op == "channels":
        return _Change(src.get()[:, :, loc.k:loc.k + loc.c].contiguous())
    if op == "pointwise":
        if loc.pair_in:
            ref, new = (src.ref, src.new) if loc.in_place else (src.ref.clone(), src.new.clone())
        else:
            ref = _read(plan, padded, loc.reads[0], pos, loc.width)
            new = ref + src.get()
        if loc.relu:
            ref, new = ref.relu_(), new.relu_()
        else:
            ref, new = loc.fn(ref), loc.fn(new)
        return _Change(None, ref, new)
    if op == "conv" and loc.delta and ("reversed", loc.id) in plan.weights:
        d = src.get()
        delta = (d.reshape(d.shape[0], d.shape[2]) @ plan.weights[("reversed", loc.id)]).view(d.shape[0], loc.k, -1)
    elif op == "conv" and loc.delta:
        delta = _transposed_conv(src.get(), plan.weights[loc.id], loc)
    elif op == "conv":
        delta = _direct_conv(_rel_shift(loc, 0, src.get(), tab, pos, pos_np), plan.weights[loc.id], loc)
    elif op == "pool":
        shifted = _rel_shift(loc, 0, src.get(), tab, pos, pos_np)
        if loc.kind == "avgpool":
            delta = _unfold(shifted, loc).mean(-1)
        else:
            ref = _read(plan, padded, loc.reads[0], pos, loc.w_in)
            delta = _unfold(ref + shifted, loc).amax(-1) - _unfold(ref, loc).amax(-1)
    elif op == "crop":
        delta = _rel_shift(loc, 0, src.get(), tab, pos, pos_np)
    elif op == "cat":
        delta = torch.cat([_rel_shift(loc, j, changes[s].get(), tab, pos, pos_np) for j, s in enumerate(loc.src)], 2)
    elif op == "binary":
        delta = _added_in_place(plan, loc, changes, pos_np) if loc.kind == "add" else None
        if delta is None:
            da = _rel_shift(loc, 0, src.get(), tab, pos, pos_np)
            db = _rel_shift(loc, 1, changes[loc.src[1]].get(), tab, pos, pos_np)
            if loc.kind in ("add", "sub"):
                delta = loc.fn(da, db)
            else:
                ra = _read(plan, padded, loc.reads[0], pos, loc.width)
                rb = _read(plan, padded, loc.reads[1], pos, loc.width)
                delta = loc.fn(ra + da, rb + db) - loc.fn(ra, rb)
    else:
        raise AssertionError(op)
    outside = tab.get("outside")
    if outside is not None:       # zero the positions outside the activation, from the plan's table
        return _Change(delta.masked_fill(outside[pos], 0.0))
    st = loc.st[pos_np]
    hang = (st < 0) | (st + loc.width > loc.length)
    if hang.any():                # zero the positions outside the activation
        if hang.all():
            cols = tab["st"][pos][:, None] + torch.arange(loc.width, device=pos.device)
            delta = delta.masked_fill(((cols < 0) | (cols >= loc.length))[:, :, None], 0.0)
        else:
            if op == "crop":      # a crop may be a view of its source's change
                delta = delta.clone()
            rows = torch.as_tensor(np.flatnonzero(hang), device=pos.device)
            cols = tab["st"][pos[rows]][:, None] + torch.arange(loc.width, device=pos.device)
            delta[rows] = delta[rows].masked_fill(((cols < 0) | (cols >= loc.length))[:, :, None], 0.0)
    return _Change(delta)


def _added_in_place(plan, loc, changes, pos_np):
    """A residual addition done in place: when one operand's window is the sum's (offset 0, full
    width), its change a tensor of its own that no one reads after this, the other operand (at
    one offset for the whole chunk, inside the window) is added into it. ``None`` when that does
    not apply."""
    for j in (1, 0):
        own, other = plan.locals[loc.src[j]], plan.locals[loc.src[1 - j]]
        if own.last != loc.id or own.keep or loc.src[0] == loc.src[1] or \
                own.op not in ("input", "conv", "pool", "pointwise", "binary"):
            continue
        rel_own, rel_other = loc.rel[j][pos_np], loc.rel[1 - j][pos_np]
        r = int(rel_other[0])
        if rel_own.any() or own.width != loc.width or not (rel_other == r).all() or r > 0 \
                or other.width - r > loc.width:
            continue
        out = changes[loc.src[j]].get(last=True)
        out[:, -r:-r + other.width] += changes[loc.src[1 - j]].get()
        return out
    return None


def _free(plan, changes, loc):
    """Before ``loc`` runs: its sources that no one reads after it are read in place (the change
    of an element-wise layer computed over its mutant windows) and then dropped."""
    for s in loc.src:
        src = plan.locals[s]
        if src.last == loc.id and not src.keep and changes[s] is not None:
            changes[s].get(last=True)


def _spliced(plan, loc, acts, change, chunk, out=None):
    """The mutants' whole activation ``[N, C, l]`` (channel-major: the node's own layout): the
    reference with each mutant's changed window added in, written into ``out`` when given. Small
    chunks add the windows with one element-wise ``index_add_`` whose index the schedule's chunk
    keeps; larger ones add them as rows of a position-major copy (index built per call)."""
    delta = change.get()
    n, w = delta.shape[0], delta.shape[1]
    c, length = loc.c, loc.length
    if out is not None:               # the result rows: [N, C, l], [N, C, 1, l] or [N, C l], one layout
        out = out.view(n, c, length)
    if w == length and not loc.st[chunk.pos_np].any():
        full = out if out is not None else delta.new_empty((n, c, length))
        return torch.add(acts[("cm", loc.id)], delta.transpose(1, 2), out=full)
    index = chunk.splice.get(loc.id)
    if index is None and n * w * c <= TABLE_ENTRIES:
        cols = loc.st[chunk.pos_np][:, None] + np.arange(w)
        outside = (cols < 0) | (cols >= length)
        flat = (np.arange(n)[:, None, None] * (c * length) + np.arange(c) * length
                + np.clip(cols, 0, length - 1)[:, :, None])
        index = chunk.splice[loc.id] = (torch.as_tensor(flat.reshape(-1), device=delta.device),
                                        torch.as_tensor(outside, device=delta.device)[:, :, None]
                                        if outside.any() else None)
    if index is not None:
        flat, outside = index
        if outside is not None:
            delta = delta.masked_fill(outside, 0.0)
        full = out if out is not None else delta.new_empty((n, c, length))
        full.copy_(acts[("cm", loc.id)].expand(n, c, length))
        return full.view(-1).index_add_(0, flat, delta.reshape(-1)).view(n, c, length)
    pos = chunk.pos
    full = acts[loc.id].unsqueeze(0).repeat(n, 1, 1)
    idx = plan.tables[loc.id]["st"][pos][:, None] + torch.arange(w, device=pos.device)
    outside = (idx < 0) | (idx >= length)
    if outside.any():
        delta = delta.masked_fill(outside[:, :, None], 0.0)
    rows = idx.clamp(0, length - 1) + (torch.arange(n, device=pos.device) * length)[:, None]
    full.view(n * length, c).index_add_(0, rows.flatten(), delta.reshape(n * w, c))
    if out is None:
        return full.transpose(1, 2)
    return out.copy_(full.transpose(1, 2))


def _dense_whole(n, w, src, hidden, groups, device):
    """Whether one GEMM over the whole flattened activation (its changes scattered into zeros)
    is expected to be faster than one GEMM per group of window starts (``groups``, from
    ``_dense_groups``): on small models the groups' operations outweigh the multiply-adds the
    whole width adds."""
    if len(groups) < 2:
        return False
    cost = COST.get(torch.device(device).type, COST["cuda"])
    extra = n * (src.length - w) * src.c * (hidden * cost["mac"] + cost["number"])
    ops = sum(3 if len(runs) == 1 else 4 + 4 * len(runs) for _, _, runs in groups) - 6
    return extra < ops * cost["op"]


def _dense_way(dense, src, starts, device):
    """How one chunk's first-dense-layer update runs (window-independent: a function of the
    mutants' window ``starts`` only, built once per schedule): ``("gathered", W)``: each mutant's
    own weight columns ``W [N, w C, H]`` (zero where its window hangs over the activation), one
    batched GEMM, when they are few (``GATHERED_ENTRIES``); ``("whole", rows, outside)``: the
    changes scattered into the whole flattened activation, one GEMM (``_dense_whole``);
    ``("groups", groups)``: one GEMM per group of window starts (``_dense_groups``)."""
    n = len(starts)
    c, w, p = src.c, src.width, src.length
    hidden = dense.weight_pm.shape[0]
    cols = starts[:, None] + np.arange(w)
    outside = (cols < 0) | (cols >= p)
    if n * w * c * hidden <= GATHERED_ENTRIES:
        idx = (np.clip(cols, 0, p - 1)[:, :, None] * c + np.arange(c)).reshape(-1)
        gathered = dense.weight_pm.T.index_select(0, torch.as_tensor(idx, device=device))
        if outside.any():
            gathered[torch.as_tensor(np.repeat(outside.reshape(-1), c), device=device)] = 0.0
        return ("gathered", gathered.view(n, w * c, hidden))
    groups = _dense_groups(starts)
    if _dense_whole(n, w, src, hidden, groups, device):
        rows = np.clip(cols, 0, p - 1) + (np.arange(n) * p)[:, None]
        mask = torch.as_tensor(outside, device=device)[:, :, None] if outside.any() else None
        return ("whole", torch.as_tensor(rows.reshape(-1), device=device), mask)
    return ("groups", groups)


def _dense_update(dense, src, delta, ref_pre, way, out=None):
    """First dense layer's pre-activation ``[N, H]`` of the mutants, the way ``_dense_way`` chose:
    their own weight columns times their changes (one batched GEMM), one GEMM over the whole
    activation, or one GEMM per run of mutants whose windows start within DENSE_SPAN positions
    (their union window, zero-filled). Written into ``out`` when given."""
    n = delta.shape[0]
    c, w = src.c, delta.shape[1]
    if way[0] == "gathered":
        h = torch.bmm(delta.reshape(n, 1, w * c), way[1], out=None if out is None else out.view(n, 1, -1))
        return h.view(n, -1).add_(ref_pre)
    hidden = _dense_other(dense, src, delta, ref_pre, way)
    return hidden if out is None else out.view(n, -1).copy_(hidden)


def _dense_other(dense, src, delta, ref_pre, way):
    """``_dense_update`` of the ways ``whole`` and ``groups``."""
    n = delta.shape[0]
    c, w, p = src.c, delta.shape[1], src.length
    if way[0] == "whole":
        _, rows, outside = way
        if outside is not None:
            delta = delta.masked_fill(outside, 0.0)
        x = delta.new_zeros(n * p, c)
        x.index_add_(0, rows, delta.reshape(n * w, c))
        return torch.addmm(ref_pre, x.view(n, p * c), dense.weight_pm.T)
    hidden = torch.empty(n, dense.weight_pm.shape[0], device=delta.device, dtype=delta.dtype)
    for r0, r1, runs in way[1]:
        a, b = max(runs[0][2], 0), min(runs[-1][2] + w, p)       # union of the windows, clipped
        if b <= a:
            hidden[r0:r1] = ref_pre
            continue
        if len(runs) == 1:
            s0 = runs[0][2]
            x = delta[r0:r1, a - s0:b - s0].reshape(r1 - r0, (b - a) * c)
        else:
            x = delta.new_zeros(r1 - r0, b - a, c)
            for q0, q1, s0 in runs:
                lo, hi = max(s0, a), min(s0 + w, b)
                if hi > lo:
                    x[q0 - r0:q1 - r0, lo - a:hi - a] = delta[q0:q1, lo - s0:hi - s0]
            x = x.view(r1 - r0, (b - a) * c)
        torch.addmm(ref_pre, x, dense.weight_pm[:, a * c:b * c].T, out=hidden[r0:r1])
    return hidden


def _run_chunk(plan, env, acts, padded, onehot, chunk, alts, out=None):
    """Outputs ``[N, F]`` of the mutants of one ``_Chunk`` of the schedule putting base ``alts``
    at its positions; an output that is a local activation or a first dense layer is written
    into ``out`` when given."""
    pos, pos_np = chunk.pos, chunk.pos_np
    n = pos.shape[0]
    changes = _run_locals(plan, padded, onehot, pos, pos_np, alts)
    values = dict(plan.static)
    for d, way in zip(plan.dense, chunk.dense):
        dest = out if d.node is plan.output else None
        ref_pre = acts.get(("pre", d.node))
        if ref_pre is None:           # the window's own pre-activation [H], kept with its activations
            ref_pre = acts[("pre", d.node)] = env[d.node][0]
        values[d.node] = _dense_update(d, plan.locals[d.src], changes[d.src].get(), ref_pre, way, dest)
    for r in plan.reductions:         # the reference's sum or mean plus the change window's
        ref = env[r.node]
        total = changes[r.src].get().sum(1)
        if r.kind == "mean":
            total = total.div_(r.length)
        values[r.node] = total.add_(ref.reshape(1, -1)).view((n,) + tuple(ref.shape[1:]))
    spliced = {}

    def value(node):
        if node in values:
            return values[node]
        i = plan.node_local[node]
        if i not in spliced:
            dest = out if node is plan.output else None
            spliced[i] = _spliced(plan, plan.locals[i], acts, changes[i], chunk, dest)
        return spliced[i].reshape((n,) + tuple(env[node].shape[1:]))

    steps = plan.steps
    if steps is None:
        steps = plan.steps = _replay_steps(plan, env)
    for node, size, inputs in steps:
        if node in values:
            continue
        if size is not None:          # a local activation's size: the chunk's batch, else the reference's
            values[node] = n if size == () else (n,) + size
        elif inputs is None:          # a function of flat positional arguments
            values[node] = node.target(*[value(a) if isinstance(a, fx.Node) else a for a in node.args])
        else:
            values[node] = _call(plan, node, {a: value(a) for a in inputs})
    return value(plan.output)


def _replay_steps(plan, env):
    """``(node, size, inputs)`` of each replayed node, built once per plan: ``size`` (for a
    ``size`` call on a local activation) ``()`` when it asks for the batch dimension, else the
    activation's shape after it; ``None`` for any other node, which runs on ``inputs``, or
    (``inputs`` ``None`` too) a function called on its flat positional arguments."""
    steps = []
    for node in plan.replay:
        if node.op == "call_method" and node.target == "size" and node.args[0] in plan.node_local:
            steps.append((node, () if node.args[1:] == (0,) else tuple(env[node.args[0]].shape[1:]), None))
        elif node.op == "call_function" and not node.kwargs and \
                not any(isinstance(a, (tuple, list, dict, slice)) for a in node.args):
            steps.append((node, None, None))
        else:
            steps.append((node, None, _node_inputs(node)))
    return steps


DENSE_SPAN = 4   # window starts merged into one dense GEMM (more rows; a little more width)
CHUNK_BYTES = {"cpu": 16 << 20, "cuda": 512 << 20}   # the largest activation of one chunk


def chunk_size(plan, batch_size, dtype, device):
    """Mutants per chunk: at most ``batch_size``, and few enough that the largest activation of
    a chunk stays within ``CHUNK_BYTES`` of the device (on a CPU, activations that stay in the
    caches run several times faster than ones that stream from memory)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    budget = CHUNK_BYTES.get(torch.device(device).type, CHUNK_BYTES["cuda"])
    return int(max(1, min(int(batch_size), max(16, budget // (plan.values_per_mutant() * itemsize)))))


def _dense_groups(starts, span=DENSE_SPAN):
    """``(r0, r1, runs)`` row ranges of sorted ``starts`` spanning fewer than ``span`` values;
    ``runs``: ``(q0, q1, start)`` of each distinct start in it. One step per group (a search for
    the group's end among the distinct starts), not per row."""
    n = len(starts)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(starts)) + 1, [n]])
    first = np.asarray(starts)[bounds[:-1]]
    groups, i = [], 0
    while i < len(first):
        j = int(np.searchsorted(first, first[i] + span, "left"))
        runs = list(zip(bounds[i:j].tolist(), bounds[i + 1:j + 1].tolist(), first[i:j].tolist()))
        groups.append((runs[0][0], runs[-1][1], runs))
        i = j
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


GATHERED_ENTRIES = 1 << 21   # a chunk's dense-layer weight columns gathered per mutant up to this size
SCHEDULES = 8                # schedules kept per plan (the last ones used)


@dataclass
class _Chunk:
    """One chunk of a schedule: rows ``a:b`` of the sorted mutants, their positions (device and
    host) and how each first dense layer updates (``_dense_way``)."""
    a: int
    b: int
    pos: torch.Tensor
    pos_np: np.ndarray
    dense: list
    splice: dict = field(default_factory=dict)    # local id -> _spliced's index of this chunk


@dataclass
class _Schedule:
    """What a call does with a set of substituted positions, built once and kept by the plan
    (``SCHEDULES``): it depends on the positions only (sorted, identity and unreachable ones
    left out), not on the window or the bases, so every window of a run with the same offsets
    reuses it. ``naive``: the cost model's reason to run naive ISM (empty: incremental)."""
    naive: str
    chunks: list


def _schedule(plan, pos_np, batch_size, choose, dtype, device):
    """The plan's ``_Schedule`` of the sorted positions ``pos_np`` (cached)."""
    key = (pos_np.tobytes(), int(batch_size), bool(choose), dtype, str(device))
    found = plan.schedules.get(key)
    if found is not None:
        return found
    starts = plan.locals[plan.order_src].st[pos_np] if plan.order_src is not None else pos_np
    bounds = _chunks(starts, chunk_size(plan, batch_size, dtype, device))
    naive = ""
    chunks = []
    for a, b in bounds:
        ways = [_dense_way(d, plan.locals[d.src], plan.locals[d.src].st[pos_np[a:b]], device)
                for d in plan.dense]
        chunks.append(_Chunk(a, b, torch.from_numpy(pos_np[a:b]).to(device), pos_np[a:b], ways))
    if choose and len(pos_np):
        groups = sum(len(w[1]) if w[0] == "groups" else 1 for c in chunks for w in c.dense)
        fast_s, naive_s = estimated_seconds(plan, len(pos_np), len(chunks), groups, batch_size, device)
        if naive_s < fast_s:
            naive = f"the cost model expects {fast_s * 1e3:.2g} ms incremental, {naive_s * 1e3:.2g} ms naive " \
                    f"for {len(pos_np)} substitutions of this {plan.length} bp window"
            chunks = []
    schedule = _Schedule(naive, chunks)
    if len(plan.schedules) >= SCHEDULES:
        plan.schedules.pop(next(iter(plan.schedules)))
    plan.schedules[key] = schedule
    return schedule


def fast_substitution_predictions(model, onehot, offsets, alts, reference=None, batch_size=256, choose=True,
                                  identity=None, state=None, host=None):
    """Outputs ``[M, F]`` of the model on each substitution of ``onehot [4, L]``, by incremental
    computation; ``None`` when the model cannot be analysed, or (``choose``) when the cost model
    (``estimated_seconds``) expects naive ISM to be faster on these substitutions (the caller
    runs naive ISM; the reason is logged once per model).

    ``reference``: the model's own output ``[F]`` on ``onehot`` (computed when not given); the
    plan's reference must match it, else the model counts as not analysable. Identity
    substitutions get exactly ``reference`` (``identity``: their ``[M]`` bool mask when the caller
    has it). ``batch_size``: the most mutants per chunk (fewer when their activations would
    outgrow ``CHUNK_BYTES``, see ``chunk_size``). ``state``: the model's ``_state_signature`` when
    the caller has just computed it; ``host``: ``offsets`` and ``alts`` as int64 numpy arrays when
    it has them.
    """
    if torch.is_grad_enabled():
        with torch.no_grad():
            return fast_substitution_predictions(model, onehot, offsets, alts, reference, batch_size, choose,
                                                 identity, state, host)
    length = onehot.shape[-1]
    plan = get_plan(model, length, state)
    if reference is None:
        reference = model(onehot.unsqueeze(0))[0]
    if not isinstance(plan, Plan):
        _report(model, plan)
        return None
    m = offsets.shape[0]
    if m == 0:
        return reference.new_empty((m,) + tuple(reference.shape))
    # the bookkeeping on the host (views of CPU tensors), built once per set of substitutions
    off_np, alt_np = host if host is not None else (offsets.cpu().numpy(), alts.cpu().numpy())
    off_np, alt_np = off_np.astype(np.int64, copy=False), alt_np.astype(np.int64, copy=False)
    if identity is None:
        identity = identity_np(onehot, off_np, alt_np)
    else:
        identity = np.asarray(identity.cpu() if isinstance(identity, torch.Tensor) else identity, dtype=bool)
    call = _call_plan(plan, off_np, alt_np, identity, batch_size, choose, onehot, offsets.device)
    schedule = call.schedule
    if schedule.naive:
        _report(model, schedule.naive, "is faster with naive ISM")
        return None
    env, acts, padded = _cached_window(plan, onehot, reference, model)
    if env is None:
        return None
    out = reference.new_empty((m,) + tuple(reference.shape))
    if call.kept is not None:
        out[call.kept] = reference
    if call.order is False:
        return out
    alt_sorted = alts if call.alts is None else call.alts
    direct = call.whole and out.is_contiguous() and call.direct
    for chunk in schedule.chunks:
        y = _run_chunk(plan, env, acts, padded, onehot, chunk, alt_sorted[chunk.a:chunk.b], out if direct else None)
        if direct:
            continue
        if call.whole:
            out.copy_(y.reshape(out.shape))
        else:
            out.index_copy_(0, call.order[chunk.a:chunk.b], y.to(out.dtype))
    return out


@dataclass
class _CallPlan:
    """The bookkeeping of one set of substitutions (``_call_plan``): the ``_Schedule``, the rows
    that get the reference (``kept``, a bool tensor, or ``None``), the rows' order (``order``: an
    index tensor, ``None`` when they are in order, ``False`` when no row runs), the sorted bases
    (``alts``; ``None``: the caller's, already in order), whether the rows are in order in one
    chunk (``whole``) and whether the output is written straight into the result (``direct``)."""
    schedule: object
    kept: object
    order: object
    alts: object
    whole: bool
    direct: bool


CALL_PLANS = 16              # _call_plan's entries kept per plan (the last ones used)


def _call_plan(plan, off_np, alt_np, identity, batch_size, choose, onehot, device):
    """The plan's ``_CallPlan`` of these substitutions, built on the host once per set of offsets,
    bases and identity rows (cached on the plan by their bytes: a caller that runs the same
    substitutions of many windows, or of one window again, skips this bookkeeping). Identity
    substitutions (the column already is that base) and substitutions whose change cannot reach
    the output get exactly the reference; the others run sorted by position, as the plan's
    schedule of those positions says."""
    key = (off_np.tobytes(), alt_np.tobytes(), identity.tobytes(), int(batch_size), bool(choose), onehot.dtype,
           str(onehot.device), str(device))
    found = plan.calls.get(key)
    if found is not None:
        return found
    if plan.live_all is None:
        plan.live_all = bool(plan.live.all())
    todo = ~identity if plan.live_all else ~identity & plan.live[off_np]
    every = bool(todo.all())
    order_np = np.arange(len(off_np)) if every else np.flatnonzero(todo)
    pos_np = off_np if every else off_np[order_np]
    in_order = not (pos_np[1:] < pos_np[:-1]).any()
    if not in_order:
        by_pos = np.argsort(pos_np, kind="stable")
        order_np, pos_np = order_np[by_pos], pos_np[by_pos]
    schedule = _schedule(plan, pos_np, batch_size, choose, onehot.dtype, onehot.device)
    whole = every and in_order and len(schedule.chunks) == 1     # rows already in order
    order = False if not len(order_np) else None if whole else torch.from_numpy(order_np).to(device)
    call = _CallPlan(schedule, None if every else torch.from_numpy(~todo).to(device), order,
                     None if every and in_order else torch.from_numpy(alt_np[order_np]).to(device), whole,
                     plan.output in plan.node_local or any(d.node is plan.output for d in plan.dense))
    if len(plan.calls) >= CALL_PLANS:
        plan.calls.pop(next(iter(plan.calls)))
    plan.calls[key] = call
    return call


def identity_np(onehot, offsets, alts):
    """``[M]`` bool numpy array: substitution ``i`` puts the base the window already has at
    ``offsets[i]`` (numpy ints; an N or multi-hot column has none)."""
    x = onehot if onehot.device.type == "cpu" and not onehot.requires_grad else onehot.detach().cpu()
    x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    hot = (x != 0).sum(0) == 1               # [L]: one non-zero base; identity if it is alts[i] and 1
    return hot[offsets] & (x[alts, offsets] == 1)


def _report(model, reason, what="cannot be analysed"):
    """Log once per model (and reason) that fast ISM runs naive ISM instead."""
    key = reason if what == "cannot be analysed" else what
    if _REPORTED.get(model) != key:
        _REPORTED[model] = key
        log.info("fast ISM of %s %s (%s): using naive ISM", model_name(model), what, reason)
