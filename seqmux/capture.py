"""Capture a sequence model's forward pass as a ``torch.fx`` graph, for models a plain symbolic
trace cannot follow.

``torch.fx.symbolic_trace`` runs ``forward`` on proxies that know nothing of their shapes, so
Python control flow on a shape (``x.view(1, -1) if 1 == len(x.size()) else x``, as the
published Beluga's ``Lambda`` modules do) stops it. ``capture`` traces with proxies that carry
the value of every node on one example window (batch 1): ``x.size()``, ``x.shape``, ``x.dim()``
and ``x.ndim`` are plain Python ints, except the batch size, which stays a graph node, so the
graph runs on any batch. Such a graph is specific to the window length it was captured at.
Modules of ``torch.nn`` (and any module in ``leaves``) are kept as single calls.

Tracing runs ``forward`` on proxies, so a forward that mutates its module (``self.rows +=
x.shape[0]``) would leave a proxy behind, and the tracer stores tensor constants on the model:
``capture`` and ``trace`` restore every module's attributes afterwards (``preserved``) and build
their ``GraphModule`` from the objects the graph names, not from the model.
"""

import contextlib

import torch
from torch import fx

try:  # evaluating a node must not be traced itself: the tracer's patches are lifted meanwhile
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _untraced
except ImportError:  # pragma: no cover - other torch releases
    _untraced = contextlib.nullcontext


def model_name(model):
    """The class name of the user's model (through ``seqmux.ism.Bound``), for log lines."""
    return getattr(model, "ism_name", type(model).__name__)


class CaptureError(Exception):
    """``forward`` cannot be captured (data-dependent control flow, unsupported Python, ...)."""


class _ShapedProxy(fx.Proxy):
    """A proxy whose shape is known: only the batch size (dimension 0) stays symbolic."""

    def _value(self):
        return self.tracer.values.get(self.node)

    def size(self, dim=None):
        value = self._value()
        if not isinstance(value, torch.Tensor):
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        if dim is None:
            return tuple(
                self.tracer.create_proxy("call_method", "size", (self, 0), {}) if i == 0 else int(s)
                for i, s in enumerate(value.shape))
        dim = dim + value.dim() if dim < 0 else dim
        if dim == 0:
            return self.tracer.create_proxy("call_method", "size", (self, 0), {})
        return int(value.shape[dim])

    @property
    def shape(self):
        return self.size()

    def dim(self):
        value = self._value()
        if isinstance(value, torch.Tensor):
            return value.dim()
        return self.tracer.create_proxy("call_method", "dim", (self,), {})

    @property
    def ndim(self):
        return self.dim()


class _ShapedTracer(fx.Tracer):
    def __init__(self, example, leaves=()):
        super().__init__()
        self.example = example
        self.leaves = tuple(leaves)
        self.values = {}

    def is_leaf_module(self, m, qualname):
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def proxy(self, node):
        return _ShapedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        a, kw = fx.node.map_arg((node.args, node.kwargs), self._value_of)
        with _untraced():
            value = self._evaluate(kind, target, a, kw)
        self.values[node] = value
        return proxy

    def _value_of(self, n):
        """A node's value; a ``get_attr`` the tracer made without a proxy (a tensor constant of
        the forward, e.g. an extra argument) is read from the root."""
        if n not in self.values and n.op == "get_attr":
            self.values[n] = self._evaluate("get_attr", n.target, (), {})
        return self.values[n]

    def _evaluate(self, kind, target, a, kw):
        if kind == "placeholder":        # the window; a parameter with a default: the default
            value = a[0] if a else self.example
        elif kind == "get_attr":
            value = self.root
            for part in target.split("."):
                value = getattr(value, part)
        elif kind == "call_module":
            value = self.root.get_submodule(target)(*a, **kw)
        elif kind == "call_method":
            value = getattr(a[0], target)(*a[1:], **kw)
        elif kind == "call_function":
            value = target(*a, **kw)
        else:
            value = None
        return value


@contextlib.contextmanager
def preserved(model):
    """Every module of ``model`` left with the attributes (parameters, buffers, submodules and
    plain attributes, as objects) it had before the block; its lists, dicts and sets (one level
    deep) keep their contents."""
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    containers = [(v, list(v) if isinstance(v, list) else v.copy()) for _, attrs, *_ in saved
                  for k, v in attrs.items() if isinstance(v, (list, dict, set)) and not k.startswith("_")]
    try:
        yield
    finally:
        for m, attrs, params, buffers, modules in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for now, before in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
                now.clear()
                now.update(before)
        for now, before in containers:     # a list the forward appends to, ...
            if isinstance(now, list):
                now[:] = before
            else:
                now.clear()
                now.update(before)


def _named_objects(root, graph):
    """``{target: object}`` of the graph's ``get_attr`` and ``call_module`` nodes, read from ``root``."""
    found = {}
    for n in graph.nodes:
        if n.op in ("get_attr", "call_module") and n.target not in found:
            value = root
            for part in n.target.split("."):
                value = getattr(value, part)
            found[n.target] = value
    return found


class Captured:
    """A captured forward: ``graph``, the value of every node on the example window (``values``)
    and the objects its ``get_attr`` / ``call_module`` nodes name (``objects``)."""

    def __init__(self, graph, values, objects):
        self.graph, self.values, self.objects = graph, values, objects


@torch.no_grad()
def capture(model, length, leaves=()):
    """``Captured``: the ``torch.fx.Graph`` of ``model`` on one-hot windows ``[B, 4, length]``
    and the value of every node on one example window (batch 1, zeros but for an A at every
    position, on the model's device and dtype). Raises ``CaptureError`` with the reason."""
    param = next(iter(list(model.parameters()) + list(model.buffers())), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    example = torch.zeros(1, 4, length, device=device, dtype=dtype)
    example[:, 0] = 1.0
    tracer = _ShapedTracer(example, leaves)
    with preserved(model):
        try:
            graph = tracer.trace(model)
        except Exception as err:  # data-dependent control flow, a shape used as a tensor, ...
            first = str(err).splitlines()[0][:120] if str(err) else ""
            raise CaptureError(f"{type(err).__name__}: {first}") from None
        objects = _named_objects(model, graph)
    return Captured(graph, tracer.values, objects)


def trace(model):
    """``torch.fx.symbolic_trace`` of ``model`` that leaves no trace in it: a ``GraphModule``
    sharing the model's layers, in the model's mode. Raises what the trace raises."""
    with preserved(model):
        graph = fx.Tracer().trace(model)
        objects = _named_objects(model, graph)
    return in_mode_of(fx.GraphModule(objects, graph, model_name(model)), model)


def graph_module(model, captured):
    """A ``GraphModule`` running a ``capture`` of ``model`` with the model's own layers (shared,
    not copied), in the model's mode."""
    return in_mode_of(fx.GraphModule(captured.objects, captured.graph, model_name(model)), model)


def in_mode_of(gm, model):
    """``gm`` with the modules it made itself (its root and the containers of the layers it
    shares) in ``model``'s mode. Left in their default training mode, a caller that saves the
    root's mode, switches to eval and restores "training" (``model.train()``, as tangermeme's
    calls do) would put the shared layers, and so the user's model, into training mode: dropout
    on in every later call."""
    own = {id(m) for m in model.modules()}
    for m in gm.modules():
        if id(m) not in own:
            m.training = model.training
    return gm
