"""The saturation-mutagenesis cases of tangermeme (the fastest public ISM) in this project's
words: its toy models at their sizes and the properties its tests assert (hard-coded values,
windows of positions, ordering, batch sizes, N columns, brute force, identity rows, extra
arguments, model state and dtype), each against brute-force forward passes written here, through
both the fast and the naive path. tangermeme itself is a benchmark dependency only."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import seqmux.ism as ism
from conftest import ROUNDING_FACTOR
from seqmux.fast_ism import analysable
from seqmux.ism import predict_substitutions, substitution_effects

METHODS = ["incremental", "naive"]


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# ---------------------------------------------------------------------------------------------
# the toy models (layer sizes as in the peer's suite)

class BaseCounts(nn.Module):
    """How many of each base the window holds: ``[B, 4]``."""

    def forward(self, x):
        return x.sum(dim=-1)


class DenseOnFlat(nn.Module):
    def __init__(self, length=100, n_outputs=3):
        super().__init__()
        self.length = length
        self.dense = nn.Linear(4 * length, n_outputs)

    def forward(self, x, alpha=0, beta=1):
        return self.dense(x.reshape(x.shape[0], 4 * self.length)) * beta + alpha


class OneConv(nn.Module):
    """A profile output: ``[B, 12, L - 2]``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 12, 3)

    def forward(self, x):
        return self.conv(x)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv1d(4, 12, 3)
        self.second = nn.Conv1d(12, 1, 5)

    def forward(self, x):
        return self.second(self.first(x))[:, 0]


class Transposed(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 1)


class ConvAndDense(nn.Module):
    """Two heads: a convolution's profile and a dense layer on the flattened window."""

    def __init__(self, n_outputs=3):
        super().__init__()
        self.dense = nn.Linear(400, n_outputs)
        self.conv = nn.Conv1d(4, 12, 3)

    def forward(self, x, alpha=0):
        return self.conv(x) + alpha, self.dense(x.reshape(x.shape[0], -1))


class ConvMeanDense(nn.Module):
    def __init__(self, n_outputs=1):
        super().__init__()
        self.conv = nn.Conv1d(4, 12, 3)
        self.dense = nn.Linear(12, n_outputs)

    def forward(self, x):
        return self.dense(torch.relu(self.conv(x)).mean(dim=-1))


class ConvPoolDense(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv1d(4, 32, 3, padding="same"), nn.MaxPool1d(3)
        self.conv2, self.pool2 = nn.Conv1d(32, 16, 5, padding="same"), nn.MaxPool1d(3)
        self.dense = nn.Linear(176, 1)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.dense(torch.flatten(x, 1))


class SmallDeepSEA(nn.Module):
    def __init__(self, n_outputs=1):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv1d(4, 32, 3, padding="same"), nn.MaxPool1d(3)
        self.conv2, self.pool2 = nn.Conv1d(32, 16, 3, padding="same"), nn.MaxPool1d(3)
        self.linear1, self.linear2 = nn.Linear(176, 20), nn.Linear(20, n_outputs)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.pool1(self.conv1(x)))
        x = self.relu(self.pool2(self.conv2(x)))
        x = self.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.linear2(x)


class SharedRelu(nn.Module):
    """One ReLU module called twice."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(4, 8, 5), nn.Conv1d(8, 4, 3)
        self.relu, self.flatten, self.linear = nn.ReLU(), nn.Flatten(), nn.Linear(376, 1)

    def forward(self, x):
        return self.linear(self.flatten(self.relu(self.conv2(self.relu(self.conv1(x))))))


class SharedActivations(nn.Module):
    """A ReLU and a Tanh module, each called several times."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(4, 8, 5, padding="same"), nn.Conv1d(8, 8, 3, padding="same"),
                                    nn.Conv1d(8, 4, 3, padding="same")])
        self.relu, self.tanh, self.linear = nn.ReLU(), nn.Tanh(), nn.Linear(400, 1)

    def forward(self, x):
        x = self.tanh(self.relu(self.convs[0](x)))
        x = self.tanh(self.relu(self.convs[1](x)))
        return self.linear(self.relu(self.convs[2](x)).flatten(1))


class SharedPool(nn.Module):
    """One max-pooling module called twice."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv1d(4, 8, 3, padding="same"), nn.Conv1d(8, 8, 3, padding="same")
        self.pool, self.linear = nn.MaxPool1d(2), nn.Linear(200, 1)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.linear(x.flatten(1))


# (factory, output, whether the fast path takes it)
TOYS = {
    "base_counts": (BaseCounts, None, False),
    "dense_on_flat": (DenseOnFlat, None, True),
    "one_conv": (OneConv, None, True),
    "two_convs": (TwoConvs, None, True),
    "transposed": (Transposed, None, False),
    "conv_and_dense_profile": (ConvAndDense, 0, True),
    "conv_and_dense_dense": (ConvAndDense, 1, True),
    "conv_mean_dense": (ConvMeanDense, None, True),
    "conv_pool_dense": (ConvPoolDense, None, True),
    "small_deepsea": (lambda: SmallDeepSEA(5), None, True),
    "shared_relu": (SharedRelu, None, True),
    "shared_activations": (SharedActivations, None, True),
    "shared_pool": (SharedPool, None, True),
}


# toys the peer's fast path does not take and this project's does (a sum over the length, updated
# from the change window)
OWN_FAST = {"base_counts"}


def toy(name, seed=0, dtype=torch.float64):
    factory, output, fast = TOYS[name]
    torch.manual_seed(seed)
    return factory().to(dtype).eval(), output, fast


# ---------------------------------------------------------------------------------------------
# windows, substitutions, brute force

def window(seed, length=100, dtype=torch.float64):
    """A random one-hot window ``[4, L]`` with an N column (all zeros), a two-base column (0.5,
    0.5) and a column of 0.25s, as tangermeme's tests feed N and ambiguous columns."""
    gen = torch.Generator().manual_seed(seed)
    x = nn.functional.one_hot(torch.randint(0, 4, (length,), generator=gen), 4).T.to(dtype)
    x[:, 2] = 0.0
    x[:, 5] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    x[:, length - 3] = 0.25
    return x


def every_substitution(length=100):
    return torch.arange(length).repeat_interleave(4), torch.arange(4).repeat(length)


@torch.no_grad()
def brute_force(model, x, offsets, alts, output=None, **kwargs):
    """One forward pass per substitution, written out."""
    rows = []
    for p, b in zip(offsets.tolist(), alts.tolist()):
        m = x.clone()
        m[:, p] = 0.0
        m[b, p] = 1.0
        out = model(m[None], **kwargs)
        rows.append((out if output is None else out[output])[0])
    return torch.stack(rows)


def float64_tolerance(values):
    """A float64 computation in another order: a few hundred ulps of the largest value."""
    return 256 * float(np.spacing(max(float(values.abs().max()), 1.0)))


def forbid_naive(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("naive ISM called where the fast path must run")

    monkeypatch.setattr(ism, "naive_substitution_predictions", forbidden)


# ---------------------------------------------------------------------------------------------
# the cases

@pytest.mark.parametrize("method", METHODS)
def test_base_counts_hard_coded(method):
    """The output of a model counting bases, by hand: GATTACAGCN (A, G, C, T order)."""
    x = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0],
                      [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32).T
    offsets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 9, 9, 9, 9])
    alts = torch.tensor([0, 1, 2, 3] * 3)
    ref, out = predict_substitutions(BaseCounts(), x, offsets, alts, method)
    assert ref.tolist() == [3, 2, 2, 2]
    assert out.tolist() == [[4, 1, 2, 2], [3, 2, 2, 2], [3, 1, 3, 2], [3, 1, 2, 3],
                            [3, 2, 2, 2], [2, 3, 2, 2], [2, 2, 3, 2], [2, 2, 2, 3],
                            [4, 2, 2, 2], [3, 3, 2, 2], [3, 2, 3, 2], [3, 2, 2, 3]]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_model_equals_brute_force(name, method, monkeypatch):
    """Every substitution of a window with N and ambiguous columns; identity rows exactly the
    reference; the fast path runs where the peer's does, and on ``OWN_FAST``."""
    model, output, fast = toy(name)
    fast = fast or name in OWN_FAST
    x, (off, alt) = window(1), every_substitution()
    if method == "incremental":
        shown = ism.bind(model, (), {}, output)
        assert analysable(shown, 100)[0] == fast, analysable(shown, 100)
        if fast:
            forbid_naive(monkeypatch)
    ref, out = predict_substitutions(model, x, off, alt, method, 64, output=output)
    expected = brute_force(model, x, off, alt, output)
    assert out.shape == expected.shape and out.dtype == torch.float64
    assert torch.allclose(out, expected, rtol=0, atol=float64_tolerance(expected))
    assert (out - ref).abs().max() > 1e-4 or name == "transposed"      # real effects
    identity = x[alt, off] == 1.0
    assert int(identity.sum()) == 97
    assert torch.equal(out[identity], ref.expand_as(out[identity]))


@pytest.mark.parametrize("name", ["small_deepsea", "conv_pool_dense", "shared_activations", "two_convs"])
def test_float32_within_rounding(name, monkeypatch):
    """float32 fast ISM is as close to float64 brute force as float32 brute force is (within
    ROUNDING_FACTOR times the float32 forward passes' own rounding on these mutants)."""
    model, _, _ = toy(name, 2, torch.float32)
    x, (off, alt) = window(2, dtype=torch.float32), every_substitution()
    exact = brute_force(copy.deepcopy(model).double(), x.double(), off, alt)
    rounding = float((brute_force(model, x, off, alt).double() - exact).abs().max())
    rounding = max(rounding, float(np.spacing(np.float32(exact.abs().max()))))
    forbid_naive(monkeypatch)
    _, out = predict_substitutions(model, x, off, alt, "incremental")
    assert float((out.double() - exact).abs().max()) <= ROUNDING_FACTOR * rounding


@pytest.mark.parametrize("method", METHODS)
def test_a_window_of_positions_is_those_rows_of_the_whole(method):
    model, _, _ = toy("small_deepsea", 3)
    x, (off, alt) = window(3), every_substitution()
    _, whole = predict_substitutions(model, x, off, alt, method)
    part = (off >= 50) & (off < 60)
    _, some = predict_substitutions(model, x, off[part], alt[part], method)
    assert torch.allclose(some, whole[part], rtol=0, atol=float64_tolerance(whole))


@pytest.mark.parametrize("method", METHODS)
def test_rows_follow_the_order_asked(method):
    model, _, _ = toy("conv_pool_dense", 4)
    x, (off, alt) = window(4), every_substitution()
    _, whole = predict_substitutions(model, x, off, alt, method)
    order = torch.randperm(len(off), generator=torch.Generator().manual_seed(4))
    _, shuffled = predict_substitutions(model, x, off[order], alt[order], method)
    assert torch.allclose(shuffled, whole[order], rtol=0, atol=float64_tolerance(whole))


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_does_not_change_the_answer(method):
    model, _, _ = toy("shared_pool", 5)
    x, (off, alt) = window(5), every_substitution()
    runs = [predict_substitutions(model, x, off, alt, method, b)[1] for b in (1, 7, 1000)]
    for other in runs[1:]:
        assert torch.allclose(other, runs[0], rtol=0, atol=float64_tolerance(runs[0]))


def test_windows_are_independent():
    """A window's answer does not depend on the windows before it (the plan is reused)."""
    model, _, _ = toy("small_deepsea", 6)
    off, alt = every_substitution()
    fresh = predict_substitutions(copy.deepcopy(model), window(7), off, alt, "incremental")[1]
    predict_substitutions(model, window(6), off, alt, "incremental")
    assert torch.equal(predict_substitutions(model, window(7), off, alt, "incremental")[1], fresh)


@pytest.mark.parametrize("method", METHODS)
def test_extra_arguments_shift_the_outputs(method, monkeypatch):
    """``forward(x, alpha, beta)``: alpha moves every output by exactly alpha, beta scales."""
    model, _, _ = toy("dense_on_flat", 7)
    x, (off, alt) = window(7), every_substitution()
    if method == "incremental":
        forbid_naive(monkeypatch)
    ref0, plain = predict_substitutions(model, x, off, alt, method)
    alpha = torch.tensor([[5.0]], dtype=torch.float64)
    ref1, shifted = predict_substitutions(model, x, off, alt, method, args=(alpha,))
    assert torch.allclose(shifted - plain, torch.full_like(plain, 5.0), rtol=0, atol=float64_tolerance(shifted))
    assert torch.allclose(ref1 - ref0, torch.full_like(ref0, 5.0), rtol=0, atol=1e-12)
    _, scaled = predict_substitutions(model, x, off, alt, method, kwargs={"beta": -2.0})
    assert torch.allclose(scaled, -2.0 * plain, rtol=0, atol=float64_tolerance(scaled))
    # a head of a two-headed model with an argument
    model, _, _ = toy("conv_and_dense_profile", 7)
    _, profile = predict_substitutions(model, x, off, alt, method, kwargs={"alpha": 0.5}, output=0)
    assert torch.allclose(profile, brute_force(model, x, off, alt, 0, alpha=0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_model_state_is_kept(method):
    """Train mode and the parameters' device survive; a float64 model given float32 input and
    integer arguments answers in float64."""
    model, _, _ = toy("dense_on_flat", 8)
    model.train()
    x, (off, alt) = window(8, dtype=torch.float32), every_substitution()
    alpha = torch.tensor([[3]], dtype=torch.int32)
    ref, out = predict_substitutions(model, x, off[:40], alt[:40], method, args=(alpha,))
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert ref.dtype == out.dtype == torch.float64
    expected = brute_force(model, x.double(), off[:40], alt[:40], alpha=3)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


class Recorder(nn.Module):
    """Records the rows, device and dtype of every input its forward gets."""

    def __init__(self, length=20):
        super().__init__()
        self.model = DenseOnFlat(length, 2)
        self.calls = []

    def forward(self, x, *args):
        self.calls.append([(t.shape[0], t.device.type, t.dtype) for t in (x,) + args])
        return self.model(x, *args)


def test_naive_batches_hold_at_most_batch_size_edits():
    """The 3 x 20 = 60 edits of a 20 bp window (identity rows are not recomputed) run in order
    in batches of at most 7, after one reference call; every input in the model's dtype."""
    torch.manual_seed(0)
    model = Recorder().double()
    x = nn.functional.one_hot(torch.randint(0, 4, (20,)), 4).T.float()
    off, alt = every_substitution(20)
    predict_substitutions(model, x, off, alt, "naive", 7, args=(torch.tensor([[1.0]]),))
    assert [call[0][0] for call in model.calls] == [1] + [7] * 8 + [4]
    assert all(dtype == torch.float64 and device == "cpu" for call in model.calls for _, device, dtype in call)


def test_fast_path_leaves_the_recorders_list_as_it_was(monkeypatch):
    torch.manual_seed(0)
    model = Recorder().eval()
    x, (off, alt) = window(9, 20, torch.float32), every_substitution(20)
    forbid_naive(monkeypatch)
    predict_substitutions(model, x, off, alt, "incremental")
    assert model.calls == [[(1, "cpu", torch.float32)]]          # the reference call only


def test_effects_are_outputs_minus_the_reference():
    """``substitution_effects`` in diff mode: each row is the substitution's outputs minus the
    reference, exactly; identity rows are exactly 0."""
    model, _, _ = toy("small_deepsea", 10)
    x, (off, alt) = window(10), every_substitution()
    ref, out = predict_substitutions(model, x, off, alt, "incremental")
    ref2, eff = substitution_effects(model, x, off, alt, "diff", "incremental")
    assert torch.equal(ref2, ref) and torch.equal(eff, out - ref)
    assert (eff[x[alt, off] == 1.0] == 0).all()
