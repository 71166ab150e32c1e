"""In-silico mutagenesis (ISM) targets of a base model.

For a window with one-hot ``x [4, L]`` and sigmoid outputs ``ref = model(x) [F]``, the target of
putting base ``b`` at position ``p`` is ``[f, b, p]``: the log-fold change (default) or the
difference ``alt - ref`` of the model's outputs, exactly 0 for the identity substitution.
``predict_substitutions`` is the one entry point for computing substitution predictions (model
outputs); ``substitution_effects`` turns them into targets.

When the model's last operation is a sigmoid, effects are computed from its logits ``z`` (in
float64, with ``1 - p`` as ``exp(-z) p``): in float32 an output near 1 has a resolution of 6e-8,
which the log-fold formula would amplify into up to 1e-3 of noise between two equally exact
computations (fast vs naive ISM, two batch sizes); from the logits it stays at the logits' own
float32 rounding (at most 6.2e-6 between fast and naive ISM on the embedded default).
"""

import contextlib
import inspect
import logging
import weakref

import numpy as np
import pyarrow as pa
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .capture import model_name, trace
from .fast_ism import _state_signature, fast_substitution_predictions, identity_np
from .encoding import one_hot
from .errors import InputError
from .outputs import atomic_path
from .runtime import choose_device, progress

log = logging.getLogger(__name__)

EPS = 1e-6


class ModelOutputError(ValueError):
    """Base-model outputs that cannot give a meaningful target. The message says what is wrong;
    the entry points (``compute_targets``, ``seqmux predict --exact``) turn it into an InputError
    naming the model."""


def check_outputs(values, mode, logits, what):
    """ModelOutputError unless the model's ``values [..., F]`` can give ``mode`` targets: finite,
    and for ``logfold`` from a model's outputs (``logits`` False) probabilities strictly inside
    (0, 1) (its log-fold needs the logit, infinite at 0 and 1). ``what``: where they come from."""
    bad = ~torch.isfinite(values)
    kind = "logit" if logits else "output"
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ModelOutputError(f"{what}: {kind} {index[-1]} is {float(values[index])}: not finite")
    if mode != "logfold" or logits or values.numel() == 0:
        return
    checks = (
        ((values < 0) | (values > 1), "not a probability in [0, 1], which log-fold targets need (a model that ends "
         "in a sigmoid gives them from its logits; diff targets take any finite output)"),
        ((values == 0) | (values == 1), "exactly 0 or 1, where the log-fold needs its logit (infinite there): end "
         "the model in a sigmoid so targets come from its logits, or use diff targets"),
    )
    for test, problem in checks:
        if test.any():
            index = tuple(int(i) for i in test.nonzero()[0])
            raise ModelOutputError(f"{what}: output {index[-1]} is {float(values[index])!r}: {problem}")


def logfold(alt, ref, eps=EPS):
    """Log-fold change of sigmoid outputs: ``log((alt+e)(1-ref+e) / ((1-alt+e)(ref+e)))``."""
    return torch.log((alt + eps) * (1 - ref + eps) / ((1 - alt + eps) * (ref + eps)))


def log_odds(z, eps=EPS):
    """``log((p + e) / (1 - p + e))`` of ``p = sigmoid(z)``, in float64, with ``1 - p`` computed
    as ``exp(-z) p`` (full precision where ``p`` is near 1). One exp and one log per value;
    ``z`` is clamped to +-700 (beyond it ``p`` or ``1 - p`` is below 1e-304, nothing beside ``e``)."""
    u = z.double().clamp(-700.0, 700.0).neg_().exp_()     # exp(-z)
    p = u.add(1.0).reciprocal_()                          # sigmoid(z)
    return p.add(eps).div_(u.mul_(p).add_(eps)).log_()    # log((p + e) / (exp(-z) p + e))


def effect(alt, ref, mode):
    """``logfold`` (mode ``logfold``) or ``alt - ref`` (mode ``diff``) of outputs; broadcasts ``ref``."""
    if mode == "logfold":
        return logfold(alt, ref)
    if mode == "diff":
        return alt - ref
    raise ValueError(f"unknown target mode {mode!r}")


def effect_of_logits(z_alt, z_ref, mode):
    """``effect(sigmoid(z_alt), sigmoid(z_ref), mode)`` computed from logits in float64, returned
    in the dtype of ``z_alt``; broadcasts ``z_ref``."""
    if mode == "logfold":
        out = log_odds(z_alt) - log_odds(z_ref)
    elif mode == "diff":
        out = torch.sigmoid(z_alt.double()) - torch.sigmoid(z_ref.double())
    else:
        raise ValueError(f"unknown target mode {mode!r}")
    return out.to(z_alt.dtype)


_LOGIT_MODELS = weakref.WeakKeyDictionary()   # model -> GraphModule without the final sigmoid, or None


def _is_sigmoid(node, modules):
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.Sigmoid)
    if node.op == "call_function":
        return node.target in (torch.sigmoid, F.sigmoid)
    return node.op == "call_method" and node.target == "sigmoid"


def logit_model(model, length=None):
    """``model`` without its final sigmoid: a torch.fx ``GraphModule`` that shares the model's
    layers (weights, dtype, device, eval mode) and maps ``[B, 4, L]`` to logits ``[B, F]``.
    ``None`` when the model's last operation is not a sigmoid or its forward cannot be traced.

    A forward that a plain ``torch.fx`` trace cannot follow (Python control flow on shapes, as
    in the published Beluga's ``Lambda`` modules) is captured on windows of ``length``
    (``seqmux.capture``); that graph serves that length only.
    """
    cached = _LOGIT_MODELS.setdefault(model, {})
    for key in ("any", length):
        if key in cached:
            return cached[key]
    key = "any"
    try:
        gm = trace(model)
    except Exception as err:  # any untraceable forward: try a capture on this window length
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        gm, key = None, length
        if length is not None:
            from .capture import CaptureError, capture, graph_module

            try:
                gm = graph_module(model, capture(model, length))
            except CaptureError as err2:
                reason = str(err2)
        if gm is None:
            log.info("%s cannot be traced (%s): effects computed from its outputs", model_name(model), reason)
    head = None
    if gm is not None:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        last = out.args[0]
        if (isinstance(last, fx.Node) and _is_sigmoid(last, dict(gm.named_modules()))
                and len(last.args) == 1 and isinstance(last.args[0], fx.Node) and not last.kwargs):
            out.args = (last.args[0],)
            gm.graph.erase_node(last)
            gm.graph.eliminate_dead_code()
            gm.graph.lint()
            gm.recompile()
            head = gm
            log.info("%s ends in a sigmoid: effects computed from its logits", model_name(model))
        else:
            log.info("%s does not end in a sigmoid: effects computed from its outputs", model_name(model))
    cached[key] = head
    return head


def mutate(onehot, offsets, alts):
    """Copies of ``onehot [4, L]`` with base ``alts[i]`` put at ``offsets[i]``: ``[M, 4, L]``."""
    batch = onehot.unsqueeze(0).repeat(len(offsets), 1, 1)
    rows = torch.arange(len(offsets), device=onehot.device)
    batch[rows, :, offsets] = 0
    batch[rows, alts, offsets] = 1
    return batch


@torch.no_grad()
def naive_substitution_predictions(model, onehot, offsets, alts, batch_size=256):
    """Outputs ``[M, F]`` of the model on each mutated copy of ``onehot [4, L]``, by full forward
    passes in batches of ``batch_size`` mutants."""
    out = []
    for i in range(0, len(offsets), batch_size):
        out.append(model(mutate(onehot, offsets[i:i + batch_size], alts[i:i + batch_size])))
    if not out:
        return torch.empty(0, 0, device=onehot.device)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# the library interface: any forward signature, any head, any input dtype, any mode

class OutputSelectionError(ValueError):
    """The model's outputs cannot be narrowed to one tensor as asked (the message names the
    choices)."""


def _shape(value):
    return f"tensor {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def describe_outputs(raw):
    """``a tuple of 2 outputs (0: tensor [1, 5], 1: tensor [1, 3])``: what a forward returned."""
    if isinstance(raw, torch.Tensor):
        return f"one {_shape(raw)}"
    if isinstance(raw, dict):
        items = ", ".join(f"{k!r}: {_shape(v)}" for k, v in raw.items())
        return f"a dict of {len(raw)} outputs ({items})"
    if isinstance(raw, (tuple, list)):
        names = getattr(raw, "_fields", None) or range(len(raw))
        items = ", ".join(f"{k if isinstance(k, int) else repr(k)}: {_shape(v)}" for k, v in zip(names, raw))
        return f"a {type(raw).__name__} of {len(raw)} outputs ({items})"
    return f"a {type(raw).__name__}"


def output_key(raw, output=None):
    """The key into a forward's result ``raw`` that selects its one output tensor: ``None`` for a
    tensor, an index into a tuple or list (``output``: an index, or a field name of a named
    tuple), a key of a dict (``output``: a key, or an index into its keys in order). A result
    with one element needs no ``output``. ``OutputSelectionError`` naming the choices otherwise."""
    if isinstance(raw, torch.Tensor) and output is None:
        return None
    if isinstance(raw, (tuple, list)) and isinstance(output, int) and not isinstance(output, bool) \
            and -len(raw) <= output < len(raw) and isinstance(raw[output], torch.Tensor):
        return output % len(raw)           # the common case, without describing the outputs
    what = describe_outputs(raw)
    if isinstance(raw, torch.Tensor):
        raise OutputSelectionError(f"output={output!r}, but the model returns {what}: leave output unset")
    if isinstance(raw, dict):
        keys = list(raw)
        if output is None and len(keys) == 1:
            key = keys[0]
        elif output is None:
            raise OutputSelectionError(f"the model returns {what}: choose one with output=<key or index>")
        elif output in raw:
            key = output
        elif isinstance(output, int) and not isinstance(output, bool) and -len(keys) <= output < len(keys):
            key = keys[output]
        else:
            raise OutputSelectionError(f"output={output!r} is none of the model's outputs: it returns {what}")
    elif isinstance(raw, (tuple, list)):
        fields = list(getattr(raw, "_fields", ()))
        if output is None and len(raw) == 1:
            key = 0
        elif output is None:
            raise OutputSelectionError(f"the model returns {what}: choose one with output=<index>")
        elif isinstance(output, int) and not isinstance(output, bool) and -len(raw) <= output < len(raw):
            key = output % len(raw)
        elif isinstance(output, str) and output in fields:
            key = fields.index(output)
        else:
            raise OutputSelectionError(f"output={output!r} is none of the model's outputs: it returns {what}")
    else:
        raise OutputSelectionError(f"the model returns {what}, not a tensor, a tuple or a dict of tensors")
    if not isinstance(raw[key], torch.Tensor):
        raise OutputSelectionError(f"output {key!r} is not a tensor: the model returns {what}")
    return key


_UNRESOLVED = object()
METHODS = ("fast", "incremental", "naive")


class Bound(nn.Module):
    """``model(x, *args, **kwargs)``, narrowed to one output tensor: the one-input, one-output
    model the ISM paths (and the workflow's base model, ``seqmux.models``) run. ``output`` as in
    ``output_key``, resolved on the first call."""

    def __init__(self, model, args=(), kwargs=None, output=None, key=_UNRESOLVED):
        super().__init__()
        self.model = model
        self.extra_args, self.extra_kwargs = tuple(args), dict(kwargs or {})
        self.output, self.key = output, key
        self.ism_name = model_name(model)

    def forward(self, x):
        args, kwargs = self.extra_args, self.extra_kwargs
        if isinstance(x, fx.Proxy):      # traced: tensor arguments become constants the trace can follow
            def node(name, value):
                if not isinstance(value, torch.Tensor):
                    return value
                setattr(self, name, value)
                return x.tracer.create_proxy("get_attr", name, (), {})

            args = tuple(node(f"ism_arg{i}", a) for i, a in enumerate(args))
            kwargs = {k: node(f"ism_kwarg_{k}", v) for k, v in kwargs.items()}
        raw = self.model(x, *args, **kwargs)
        if self.key is _UNRESOLVED:
            self.key = output_key(raw, self.output)
        return raw if self.key is None else raw[self.key]


_BOUND = weakref.WeakKeyDictionary()      # model -> (signature of args, kwargs, key; Bound): the last one


def _signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value._version, value.data_ptr(), value.dtype, str(value.device))
    try:
        hash(value)
        return ("value", type(value), value)
    except TypeError:
        return ("object", id(value))


_ONE_PARAMETER = {}      # forward function -> whether it takes the window alone


def _one_parameter(model):
    """Whether ``model.forward`` takes the window alone (a trace makes every other parameter,
    defaults and ``*args`` included, an input of its own)."""
    forward = getattr(model.forward, "__func__", model.forward)
    if forward not in _ONE_PARAMETER:
        try:
            params = list(inspect.signature(model.forward).parameters.values())
            one = len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
        except (TypeError, ValueError):
            one = False
        _ONE_PARAMETER[forward] = one
    return _ONE_PARAMETER[forward]


def bind(model, args=(), kwargs=None, key=None):
    """``model`` itself when its forward takes the window alone and nothing is bound, else a
    (cached) ``Bound`` of it, so that fast ISM keeps its plan between calls with the same
    arguments."""
    kwargs = kwargs or {}
    if not args and not kwargs and key is None and _one_parameter(model):
        return model
    sig = (tuple(_signature(a) for a in args), tuple((k, _signature(v)) for k, v in sorted(kwargs.items())),
           _signature(key))
    cached = _BOUND.get(model)
    if cached is not None and cached[0] == sig:
        return cached[1]
    bound = Bound(model, args, kwargs, key=key).eval()
    _BOUND[model] = (sig, bound)
    return bound


def model_dtype_device(model, fallback=None, modules=None):
    """``(dtype, device)`` of a model's first floating-point parameter or buffer; for a model
    without one, those of ``fallback`` (float32 unless it is floating-point; the CPU).
    ``modules``: ``list(model.modules())`` when the caller has it."""
    modules = list(model.modules()) if modules is None else modules
    for kind in ("_parameters", "_buffers"):
        for m in modules:
            for t in getattr(m, kind).values():
                if t is not None and t.is_floating_point():
                    return t.dtype, t.device
    if isinstance(fallback, torch.Tensor):
        return (fallback.dtype if fallback.is_floating_point() else torch.float32), fallback.device
    return torch.float32, torch.device("cpu")


def _to_eval(model, modules=None):
    """Put ``model`` in eval mode; its modules' own modes, for ``_restore_modes``."""
    modes = [(m, m.training) for m in (model.modules() if modules is None else modules)]
    if any(training for _, training in modes):
        model.eval()
    return modes


def _restore_modes(modes):
    for m, training in modes:
        if m.training != training:
            m.training = training


@contextlib.contextmanager
def eval_mode(model, modules=None):
    """``model`` in eval mode inside the block (no dropout, batch norm on its running statistics);
    every module's own mode restored afterwards. ``modules``: ``list(model.modules())`` when the
    caller has it."""
    modes = _to_eval(model, modules)
    try:
        yield model
    finally:
        _restore_modes(modes)


def checked_substitutions(offsets, alts, length, device):
    """``offsets``, ``alts`` as int64 tensors ``[M]`` on ``device``; ``ValueError`` naming the
    first substitution outside the window (``0 <= offset < length``) or the bases (0..3)."""
    off = torch.as_tensor(offsets, device=device)
    alt = torch.as_tensor(alts, device=device)
    for name, t in (("offsets", off), ("alts", alt)):
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-d integer tensor, got {t.dtype} of shape {list(t.shape)}")
    if off.shape != alt.shape:
        raise ValueError(f"{off.shape[0]} offsets but {alt.shape[0]} alts")
    off, alt = off.long(), alt.long()
    if not off.numel():
        return off, alt
    # one bounds check of both (on the host: numpy views of CPU tensors, no torch operations)
    if off.device.type == "cpu":      # viewed as unsigned, a negative value is larger than any bound
        ok = off.numpy().view(np.uint64).max() < length and alt.numpy().view(np.uint64).max() < 4
    else:
        ok = bool(((off >= 0) & (off < length)).all() and ((alt >= 0) & (alt < 4)).all())
    if not ok:
        for name, t, top, what in (("offset", off, length,
                                    f"outside the window of {length} positions (0..{length - 1})"),
                                   ("alt", alt, 4, "not a base index (0..3: A, G, C, T)")):
            bad = (t < 0) | (t >= top)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"{name} {int(t[i])} (substitution {i}) is {what}")
    return off, alt


_CHECKED = {}          # _substitutions' cache: (substitutions, window) bytes -> (offsets, alts, host, identity)
CHECKED_ENTRIES = 16   # the last ones used
CHECKED_BYTES = 1 << 16   # the most bytes of offsets, bases and window one key holds (small calls)


def _host_bytes(value):
    """A CPU tensor's or numpy array's ``(dtype, shape, bytes)``; ``None`` for anything else, or
    when larger than ``CHECKED_BYTES`` (a list, a tensor on another device or with a gradient)."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.requires_grad or value.nbytes > CHECKED_BYTES:
            return None
        value = value.numpy()
    elif not isinstance(value, np.ndarray) or value.nbytes > CHECKED_BYTES:
        return None
    return value.dtype.str, value.shape, value.tobytes()


def _substitutions(offsets, alts, x):
    """``(offsets, alts, host, identity)``: ``checked_substitutions`` of the window ``x [4, L]``,
    their int64 numpy copies ``host`` and the identity rows (``identity_np``). Small calls with
    host inputs (``_host_bytes``) keep the result by the bytes of the offsets, bases and window,
    so that the same substitutions of the same window (or of a window with the same bytes) are
    checked once (the tensors kept are copies of their own)."""
    keys = (_host_bytes(offsets), _host_bytes(alts), _host_bytes(x))
    key = None if None in keys else keys + (str(x.device), x.dtype)
    found = _CHECKED.get(key) if key is not None else None
    if found is not None:
        return found
    off, alt = checked_substitutions(offsets, alts, x.shape[-1], x.device)
    host = (off.cpu().numpy(), alt.cpu().numpy())
    result = (off, alt, host, identity_np(x, *host))
    if key is not None:
        result = (off.clone(), alt.clone(), (host[0].copy(), host[1].copy()), result[3])
        if len(_CHECKED) >= CHECKED_ENTRIES:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = result
    return result


def _on_model(value, dtype, device):
    """A tensor argument on the model's device, in its dtype if floating-point (integer ones, such
    as indices, keep theirs); anything else unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


@contextlib.contextmanager
def prepared(model, onehot, args=(), kwargs=None, output=None):
    """Inside the block, ``(net, x, ref, state)``: the model in eval mode narrowed to one input
    and one output (``bind``), the window ``onehot [4, L]`` cast to the model's dtype and device
    (so are the tensors among ``args`` / ``kwargs``, ``_on_model``), the model's output ``[F]``
    (or any shape) on it, and ``net``'s ``seqmux.fast_ism._state_signature`` (the plan's key).
    Restores the model's mode afterwards."""
    onehot = torch.as_tensor(onehot)
    if onehot.dim() != 2 or onehot.shape[0] != 4:
        raise ValueError(f"onehot must be [4, L], got shape {list(onehot.shape)}")
    kwargs = dict(kwargs or {})
    modules = list(model.modules())
    modes = _to_eval(model, modules)     # eval mode and no gradients, as eval_mode and no_grad do (inline:
    grad = torch.is_grad_enabled()       # their context managers cost a small call a tenth of its time)
    if grad:
        torch.set_grad_enabled(False)
    try:
        dtype, device = model_dtype_device(model, onehot, modules)
        x = onehot.to(device, dtype)
        args = tuple(_on_model(a, dtype, device) for a in args)
        kwargs = {k: _on_model(v, dtype, device) for k, v in kwargs.items()}
        key, ref, state = _reference_output(model, x, args, kwargs, output, modules)
        net = bind(model, args, kwargs, key)
        if net is not model:   # a Bound: its own mode, then the model's modules (no tensors of its own)
            state = (net.training,) + state
        yield net, x, ref, state
    finally:
        if grad:
            torch.set_grad_enabled(True)
        _restore_modes(modes)


_REFERENCES = weakref.WeakKeyDictionary()   # model -> (state, window, output key, its output, arguments): the last


def _reference_output(model, x, args, kwargs, output, modules=None):
    """``(key, ref, state)``: the key of the selected output (``output_key``), the model's output
    on the window ``x [4, L]`` (batch dimension dropped) and the model's ``_state_signature``.
    The last window's output is kept per model and reused (a copy) while the same window comes
    again with the same weights, buffers, modes and arguments (``seqmux.fast_ism`` keeps that
    window's activations the same way)."""
    state = _state_signature(model, modules)
    call = (state, tuple(_signature(a) for a in args), tuple((k, _signature(v)) for k, v in sorted(kwargs.items())),
            _signature(output))
    last = _REFERENCES.get(model)
    if last is not None and last[0] == call and last[1].shape == x.shape and last[1].dtype == x.dtype \
            and last[1].device == x.device and torch.equal(last[1], x):
        return last[2], last[3].clone(), state
    raw = model(x.unsqueeze(0), *args, **kwargs)
    key = output_key(raw, output)
    ref = (raw if key is None else raw[key])[0]
    _REFERENCES[model] = (call, x.clone(), key, ref.clone(), args, kwargs)   # the arguments kept alive: their
    return key, ref, state                                                   # ids stay theirs


def predict_substitutions(model, onehot, offsets, alts, method="naive", batch_size=256, *, args=(), kwargs=None,
                          output=None):
    """Reference outputs ``[F]`` and substitution outputs ``[M, F]`` for ``onehot [4, L]``.

    ``offsets``/``alts``: ``[M]`` integers (0-based position in the window, base index in A,G,C,T
    order); ``ValueError`` for any outside the window or the bases. ``method``: ``fast`` (the
    fastest exact path: incremental ISM, ``seqmux.fast_ism``, except on models it cannot analyse
    or where its cost model expects naive ISM to be faster, which run naive ISM with one log line
    saying why), ``incremental`` (incremental ISM whenever the model can be analysed) or
    ``naive`` (one full forward pass per substitution, in batches of ``batch_size``; incremental
    ISM processes chunks of at most ``batch_size`` mutants).

    Every forward call is ``model(x, *args, **kwargs)``; ``output`` selects the one output of a
    model returning a tuple or dict (``output_key``; ``OutputSelectionError`` naming the choices
    when it returns several and none is chosen). The window is cast to the model's dtype and
    device; the model runs in eval mode and gets its own mode back. Identity substitutions are
    exactly the reference, on every path. Results are on the model's device. No gradients (all
    of it runs inside ``prepared``).
    """
    with prepared(model, onehot, args, kwargs, output) as (net, x, ref, state):
        offsets, alts, host, identity = _substitutions(offsets, alts, x)
        return ref, _predict(net, x, offsets, alts, ref, method, batch_size, state, host, identity)


def _predict(net, x, offsets, alts, ref, method, batch_size, state=None, host=None, identity=None):
    """Substitution outputs ``[M, F]`` of a prepared (one input, one output, eval mode) model
    (``state``: its ``_state_signature``, from ``prepared``; ``host``, ``identity``: from
    ``_substitutions``)."""
    if method not in METHODS:
        raise ValueError(f"unknown ISM method {method!r} (one of {', '.join(METHODS)})")
    if host is None:
        host = (offsets.cpu().numpy(), alts.cpu().numpy())
        identity = identity_np(x, *host)
    if method in ("fast", "incremental"):
        alt = fast_substitution_predictions(net, x, offsets, alts, ref, batch_size, choose=method == "fast",
                                            identity=identity, state=state, host=host)
        if alt is not None:   # identity rows are the reference already
            return alt
    # naive, or not analysable (logged once): naive ISM gives the same values
    if len(identity) and not identity.any():
        return naive_substitution_predictions(net, x, offsets, alts, batch_size).to(ref.dtype)
    alt = ref.new_empty((offsets.shape[0],) + tuple(ref.shape))
    todo = torch.from_numpy(np.flatnonzero(~identity)).to(offsets.device)
    if todo.numel():
        alt[todo] = naive_substitution_predictions(net, x, offsets[todo], alts[todo], batch_size).to(alt.dtype)
    alt[torch.from_numpy(identity).to(offsets.device)] = ref
    return alt


@torch.no_grad()
def substitution_effects(model, onehot, offsets, alts, mode="logfold", method="fast", batch_size=256, *, args=(),
                         kwargs=None, output=None):
    """Reference outputs ``[F]`` and effects ``[M, F]`` (``mode``: ``logfold`` or ``diff``) of
    the substitutions ``offsets``/``alts`` of ``onehot [4, L]`` (see ``predict_substitutions``,
    which also says what ``args``, ``kwargs`` and ``output`` do).

    A model ending in a sigmoid runs without it (``logit_model``) and the effects come from its
    logits (``effect_of_logits``); any other model's outputs are taken as probabilities.
    """
    with prepared(model, onehot, args, kwargs, output) as (net, x, ref, state):
        offsets, alts, host, identity = _substitutions(offsets, alts, x)
        head = logit_model(net, x.shape[-1])
        if head is not None:
            ref = head(x.unsqueeze(0))[0]
        alt = _predict(net if head is None else head, x, offsets, alts, ref, method, batch_size,
                       state if head is None else None, host, identity)
    check_outputs(ref, mode, head is not None, "on the reference")
    check_outputs(alt, mode, head is not None, "on a substitution")
    with one_cpu_thread(alt.device):
        if head is None:
            return ref, effect(alt, ref[None, :], mode)
        return torch.sigmoid(ref), effect_of_logits(alt, ref[None, :], mode)


@contextlib.contextmanager
def one_cpu_thread(device="cpu"):
    """Torch on one CPU thread inside the block when ``device`` is the CPU (else no change).

    For the element-wise effect formulas: split between threads, torch's log and sigmoid gave
    other last bits in the second thread's half in about 1 process in 20 on a loaded 2-core
    machine (``benchmarks/thread_reproducibility.py``), and targets must repeat bit for bit. On one
    thread the log-fold formula takes ~0.3 s per Beluga window (6,010 x 2,003 values), ~4% of
    fast ISM's time on 2 CPU threads.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def scatter_targets(effects, offsets, alts, length):
    """Target ``[F, 4, L]`` (dtype of ``effects``) from substitution effects ``[M, F]``;
    substitutions not listed (identity) stay exactly 0."""
    target = torch.zeros(effects.shape[1], 4, length, dtype=effects.dtype, device=effects.device)
    if len(offsets):
        target[:, alts, offsets] = effects.T
    return target


def _window_effects(model, tokens, offsets, alts, mode, method, batch_size, device, **bound):
    """``substitution_effects`` of one window's tokens ``[L]`` and numpy ``offsets``/``alts``, in
    the model's dtype (float32, or float64 for a ``model.double()``); also the tensors it used.
    ``bound``: ``args``, ``kwargs``, ``output`` (``predict_substitutions``)."""
    dtype = model_dtype_device(model)[0]
    x = torch.from_numpy(one_hot(tokens)).to(device, dtype)
    off = torch.from_numpy(np.asarray(offsets, dtype=np.int64)).to(device)
    alt_idx = torch.from_numpy(np.asarray(alts, dtype=np.int64)).to(device)
    ref, effects = substitution_effects(model, x, off, alt_idx, mode, method, batch_size, **bound)
    return ref, effects, off, alt_idx


@torch.no_grad()
def window_effects(model, tokens, offsets, alts, mode="logfold", method="fast", batch_size=256, device="cpu", *,
                   args=(), kwargs=None, output=None):
    """Effects ``[M, F]`` (numpy) of the substitutions ``offsets``/``alts`` of one window's tokens
    ``[L]``, in their order: the values ``window_targets`` scatters, without the ``[F, 4, L]``.
    ``args``, ``kwargs``, ``output``: as in ``predict_substitutions``."""
    return _window_effects(model, tokens, offsets, alts, mode, method, batch_size, device, args=args, kwargs=kwargs,
                           output=output)[1].cpu().numpy()


@torch.no_grad()
def window_targets(model, tokens, offsets, alts, mode="logfold", method="fast", batch_size=256, device="cpu", *,
                   args=(), kwargs=None, output=None):
    """``(reference [F], target [F, 4, L])`` numpy arrays for one window's tokens ``[L]`` and its
    substitutions (numpy ``offsets``, ``alts``), computed in the model's dtype (float32, or
    float64 for a ``model.double()``). ``args``, ``kwargs``, ``output``: as in
    ``predict_substitutions`` (every forward call is ``model(x, *args, **kwargs)``, ``output``
    picks one head)."""
    ref, effects, off, alt_idx = _window_effects(model, tokens, offsets, alts, mode, method, batch_size, device,
                                                 args=args, kwargs=kwargs, output=output)
    target = scatter_targets(effects, off, alt_idx, len(tokens))
    return ref.cpu().numpy(), target.cpu().numpy()


@torch.no_grad()
def compute_target_shard(model, windows, tokens, variants, out_path, names, mode="logfold", dtype="float16",
                         method="fast", batch_size=256, device="cpu", base_model="custom"):
    """Write the targets of ``windows`` as a split shard (``seqmux.splits``), one record batch a window.

    ``tokens``: ``[N, L]`` uint8 (memory-mapped is fine), indexed by window id. ``variants``: an
    Arrow table with columns window_id (sorted), offset, alt_index. Peak memory is one window's
    target plus one batch of mutants, whatever the number of windows.
    """
    from .splits import split_batch, split_schema

    model = model.to(device).eval()
    length = tokens.shape[1]
    n_out = len(names)
    schema = split_schema(n_out, length, dtype, names, mode, base_model)
    wids = variants.column("window_id").to_numpy()
    offsets_all = variants.column("offset").to_numpy()
    alts_all = variants.column("alt_index").to_numpy()
    with pa.OSFile(str(out_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for w in progress(windows, len(windows), f"ISM ({method}, {device})"):
            lo, hi = np.searchsorted(wids, [w.window_id, w.window_id + 1])
            where = f"window {w.window_id} ({w.chrom}:{w.start}-{w.end})"
            try:
                ref, target = window_targets(model, tokens[w.window_id], offsets_all[lo:hi], alts_all[lo:hi],
                                             mode, method, batch_size, device)
            except ModelOutputError as err:
                raise ModelOutputError(f"{where} {err}") from None
            if ref.shape[0] != n_out:
                raise ValueError(f"model has {ref.shape[0]} outputs but {n_out} output names")
            if not np.all(np.isfinite(target)):
                raise ModelOutputError(f"{where}: a target is not finite (outputs finite, the {mode} formula "
                                       "overflowed)")
            writer.write_batch(split_batch(schema, w.window_id, w.chrom, w.start, w.end, tokens[w.window_id],
                                           ref, target))
    log.info("wrote targets of %d windows to %s", len(windows), out_path)


def compute_targets(windows_bed, tokens_npy, variants, out, split, shard, n_shards, base_model, mode="logfold",
                    dtype="float16", method="fast", batch_size=256, device="auto", precision="float32"):
    """Stage: ISM targets of the windows of one shard in one split, written as that split's shard
    ``results/splits/{split}/{shard}.feather`` (the one copy of them on disk).

    ``base_model``: dict with ``kind``, ``weights``, ``module``, ``class``, ``names`` (the config
    section, paths resolved). ``precision``: ``float32`` or ``float64`` arithmetic in the model.
    """
    from .models import build_base_model, count_outputs, output_names
    from .windows import read_windows, shard_windows

    windows = [w for w in shard_windows(read_windows(windows_bed), shard, n_shards) if w.split == split]
    tokens = np.load(tokens_npy, mmap_mode="r")
    length = tokens.shape[1]
    model = build_base_model(base_model["kind"], base_model.get("weights", ""), base_model.get("module", ""),
                             base_model.get("class", ""), length, output=base_model.get("output"))
    try:
        n_outputs = count_outputs(model, length)
    except InputError:
        raise
    except Exception as err:  # the user's model fails on a window of this length
        raise InputError(*model_source(base_model), f"the model fails on a {length} bp window (windows.length): "
                         f"{type(err).__name__}: {err}".splitlines()[0]) from None
    names = output_names(base_model["kind"], base_model.get("names", ""), n_outputs)
    model = model.to(torch.float64 if precision == "float64" else torch.float32)
    dev = choose_device(device, "config", "targets.device")
    log.info("%s shard %d/%d: %d windows of %d bp, %d outputs, %s ISM in %s on %s", split, shard + 1, n_shards,
             len(windows), length, len(names), method, precision, dev)
    with pa.memory_map(str(variants), "r") as src:
        table = pa.ipc.open_file(src).read_all()
    try:
        with atomic_path(out) as tmp:
            compute_target_shard(model, windows, tokens, table, tmp, names, mode, dtype, method, batch_size, dev,
                                 base_model["kind"])
    except ModelOutputError as err:
        raise InputError(*model_source(base_model), f"{err} (targets.mode={mode})") from None


def model_source(base_model):
    """``(source, field, value)`` naming the base model of a config section in an InputError."""
    if base_model["kind"] == "custom":
        return base_model["module"], "base_model.class", base_model["class"]
    return base_model["weights"], "base_model.weights", base_model["weights"]
