"""Fast (incremental) ISM is exact: its log-fold changes equal naive ISM's (full forward passes of
every mutant) to float32 rounding (conftest.float32_rounding: 8x how much float32 rounds the model's
logits on that window, about 1e-5 here), on random weights, random sequences with N's and every
substitution of the window (so both ends are covered); models it cannot analyse fall back to
naive ISM."""

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROUNDING_FACTOR, float32_rounding
from seqmux import fast_ism
from seqmux.encoding import N_TOKEN, one_hot
from seqmux.fast_ism import analysable, fast_substitution_predictions
from seqmux.ism import logfold, logit_model, mutate, predict_substitutions, substitution_effects
from seqmux.models import BelugaFamily, Flatten, build_demo_model
from seqmux.variants import substitutions

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def random_tokens(rng, length, n_count=5):
    tokens = rng.integers(0, 4, length).astype(np.uint8)
    tokens[rng.choice(length, n_count, replace=False)] = N_TOKEN
    tokens[[0, -1]] = [N_TOKEN, int(rng.integers(0, 4))]   # an N at one end, a base at the other
    return tokens


@torch.no_grad()
def randomize(model, seed, gain=1.0):
    """He-normal weights, small biases, random batch-norm statistics; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * np.sqrt(2.0 / fan_in) * gain)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def ism_both(model, tokens, batch_size=97, device="cpu", offsets=None, alts=None, dtype=torch.float32,
             naive_batch=64):
    """(log-fold fast [M, F], log-fold naive [M, F]) of the substitutions ``offsets``, ``alts``
    of ``tokens`` (default: all), as the target stage computes them (``substitution_effects``:
    from the logits of models ending in a sigmoid)."""
    model = model.to(device)
    x = torch.from_numpy(one_hot(tokens)).to(device, dtype)
    if offsets is None:
        offsets, alts = substitutions(tokens)
    off = torch.as_tensor(np.asarray(offsets, dtype=np.int64), device=device)
    alt = torch.as_tensor(np.asarray(alts, dtype=np.int64), device=device)
    ref_f, fast = substitution_effects(model, x, off, alt, "logfold", "incremental", batch_size)
    ref_n, naive = substitution_effects(model, x, off, alt, "logfold", "naive", naive_batch)
    assert torch.equal(ref_f, ref_n)
    return fast, naive


def assert_exact(model, tokens, **kwargs):
    """Fast ISM runs (the model is analysable) and its float32 log-folds equal naive ISM's to float32
    rounding; in float64 within 1e-9 (float64 rounds 1e-16 of values of order 10: no approximation
    anywhere)."""
    ok, detail = analysable(model, len(tokens))
    assert ok, detail
    fast, naive = ism_both(model, tokens, **kwargs)
    assert fast.shape == naive.shape and fast.dtype == torch.float32
    assert torch.isfinite(fast).all()
    assert naive.abs().max().item() > 1e-3    # the test sees real effects
    dev = (fast - naive).abs().max().item()
    # float64 (slow on CPU): the substitutions of the 12 positions at each end and 120 others
    offsets, alts = substitutions(tokens)
    pick = np.arange(len(offsets))
    ends = (offsets < 12) | (offsets >= len(tokens) - 12)
    rng = np.random.default_rng(len(tokens))
    pick = np.flatnonzero(ends | np.isin(pick, rng.choice(len(offsets), 120, replace=False)))
    model64 = copy.deepcopy(model).double()
    fast64, naive64 = ism_both(model64, tokens, dtype=torch.float64, offsets=offsets[pick], alts=alts[pick],
                               **kwargs)
    dev64 = (fast64 - naive64).abs().max().item()
    assert dev64 <= 1e-9, f"float64: max |log-fold deviation| {dev64:.2e}"
    tol = tolerance(model, tokens)
    assert dev <= tol, f"max |log-fold deviation| {dev:.2e} (tolerance {tol:.1e})"
    return dev


def tolerance(model, tokens, n_mutants=16):
    """The float32 tolerance of a log-fold effect of ``model`` on ``tokens`` (see conftest), the
    rounding measured on the window and a seeded sample of ``n_mutants`` of its mutants: the effects
    are differences of both, and the window alone can say little of its mutants' rounding (an all-N
    window is all zeros; on this AMD EPYC's kernels its mutants round 5x more than it does)."""
    x = torch.from_numpy(one_hot(tokens))
    offsets, alts = substitutions(tokens)
    pick = np.random.default_rng(len(tokens)).choice(len(offsets), min(n_mutants, len(offsets)), replace=False)
    mutants = mutate(x, torch.as_tensor(offsets[pick], dtype=torch.long), torch.as_tensor(alts[pick], dtype=torch.long))
    return ROUNDING_FACTOR * float32_rounding(model, torch.cat([x[None], mutants]))


# ---------------------------------------------------------------------------------------------
# models

class Conv2dChain(nn.Module):
    """[B, 4, L] -> unsqueeze(2) -> (1, k) convs with padding, batch norm, average pooling."""

    def __init__(self, length=150):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, 12, (1, 7), padding=(0, 3)), nn.BatchNorm2d(12), nn.ReLU(),
            nn.AvgPool2d((1, 3), (1, 3)),
            nn.Conv2d(12, 12, (1, 5), groups=3), nn.SiLU(), nn.Dropout2d(0.3),
            nn.MaxPool2d((1, 3), (1, 2), padding=(0, 1)),
            nn.Conv2d(12, 10, (1, 3), dilation=(1, 2)), nn.BatchNorm2d(10), nn.ELU(),
        )
        width = length
        width = width // 3                       # conv 'same', avg pool 3
        width = width - 4                        # conv 5
        width = (width + 2 - 3) // 2 + 1        # max pool 3 stride 2 pad 1
        width = width - 4                        # dilated conv
        self.head = nn.Sequential(Flatten(), nn.Linear(10 * width, 24), nn.BatchNorm1d(24), nn.Tanh(),
                                  nn.Dropout(0.2), nn.Linear(24, 7), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.body(x.unsqueeze(2)))


def conv1d_toy(length=120):
    """Conv1d chain: 'same' padding, batch norm, average pooling with padding, strided conv,
    LeakyReLU, flatten with torch's nn.Flatten, then dense layers."""
    width = length
    width = (width + 2 - 4) // 2 + 1            # avg pool 4, stride 2, padding 1
    width = (width - 5) // 2 + 1                # strided conv 5, stride 2
    width = width - 2                           # conv 3
    return nn.Sequential(
        nn.Conv1d(4, 8, 9, padding="same"), nn.BatchNorm1d(8), nn.ReLU(),
        nn.AvgPool1d(4, 2, padding=1),
        nn.Conv1d(8, 8, 5, stride=2), nn.LeakyReLU(0.1),
        nn.Conv1d(8, 6, 3), nn.BatchNorm1d(6), nn.GELU(),
        nn.Flatten(), nn.ReLU(), nn.Linear(6 * width, 16), nn.ReLU(), nn.Linear(16, 5), nn.Sigmoid(),
    )


class Residual(nn.Module):
    def __init__(self, length=64):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.conv2 = nn.Conv1d(6, 6, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * length, 3), nn.Sigmoid())

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h + torch.relu(self.conv2(h)))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.head = nn.Sequential(nn.Linear(8, 3), nn.Sigmoid())

    def forward(self, x):
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


# ---------------------------------------------------------------------------------------------
# exactness

@pytest.mark.parametrize("seed", [0, 1])
def test_beluga_layout_reduced_width(seed):
    """The published Beluga layout (kernel 8, pool 4) at reduced width, L = 403: the last three
    positions fall in the bases pooling drops (their substitutions change nothing)."""
    rng = np.random.default_rng(seed)
    model = randomize(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10), seed)
    assert_exact(model, random_tokens(rng, 403), batch_size=[64, 500][seed])


def test_beluga_family_other_kernel_and_pool():
    """Kernel 5 and pool 3 (pool windows straddle the changed ranges in every alignment)."""
    rng = np.random.default_rng(7)
    model = randomize(BelugaFamily(200, (8, 8, 12), 5, 3, 16, 6), 7)
    assert_exact(model, random_tokens(rng, 200), batch_size=33)


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_model(seed):
    """The demo model (JASPAR filters; its head is scaled up to logits of std 2, so many outputs
    are near 0 or 1, where float32 probabilities are too coarse for a log-fold: the effects come
    from the logits, and fast equals naive to float32 rounding)."""
    from seqmux.motifs import choose_motifs

    rng = np.random.default_rng(11 + seed)
    calib = one_hot(np.stack([random_tokens(rng, 400, 0) for _ in range(16)]))
    model = build_demo_model(choose_motifs(12, np.random.default_rng(2 + seed)), 400, 16, 5 + seed,
                             calibration_sequences=calib)
    assert_exact(model, random_tokens(rng, 400), batch_size=512)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_toy_avgpool_batchnorm_conv2d(seed):
    rng = np.random.default_rng(100 + seed)
    model = randomize(Conv2dChain(150), seed)
    assert_exact(model, random_tokens(rng, 150), batch_size=[16, 128, 10_000][seed])


@pytest.mark.parametrize("seed", [0, 1])
def test_toy_conv1d_padding_stride(seed):
    rng = np.random.default_rng(200 + seed)
    model = randomize(conv1d_toy(120), seed)
    assert_exact(model, random_tokens(rng, 120), batch_size=50)


def test_all_n_window_and_explicit_substitutions():
    """An all-N window (every base is a substitution) and a hand-picked list in arbitrary order,
    with repeats and the two ends."""
    model = randomize(conv1d_toy(120), 3)
    assert_exact(model, np.full(120, N_TOKEN, dtype=np.uint8), batch_size=40)
    rng = np.random.default_rng(5)
    tokens = random_tokens(rng, 120)
    offsets = [119, 0, 60, 0, 119, 61, 3, 60]
    alts = [(int(tokens[o]) + 1) % 4 if tokens[o] != N_TOKEN else 2 for o in offsets]
    fast, naive = ism_both(model, tokens, offsets=offsets, alts=alts)
    assert (fast - naive).abs().max().item() <= tolerance(model, tokens)


def test_identity_substitution_is_exactly_reference():
    model = randomize(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10), 4)
    rng = np.random.default_rng(4)
    tokens = random_tokens(rng, 403)
    x = torch.from_numpy(one_hot(tokens))
    pos = np.flatnonzero(tokens != N_TOKEN)[:8]  # positions with a base (N has no identity substitution)
    assert len(pos) == 8
    off = torch.from_numpy(pos)
    same = torch.from_numpy(np.where(tokens[pos] == N_TOKEN, 0, tokens[pos]).astype(np.int64))
    ref, alt = predict_substitutions(model, x, off, same, "fast")
    for i in range(len(pos)):
        assert torch.equal(alt[i], ref)
        assert torch.equal(logfold(alt[i], ref), torch.zeros_like(ref))


def test_plan_follows_weight_updates():
    """The cached plan (position-major dense weights, transposed conv weights) is rebuilt when
    the weights change in place."""
    rng = np.random.default_rng(9)
    model = randomize(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10), 9)
    tokens = random_tokens(rng, 403)
    assert_exact(model, tokens)
    randomize(model, 10)
    assert_exact(model, tokens)


@torch.no_grad()
def test_a_windows_reference_is_reused_only_for_that_window():
    """The plan keeps its last window's reference activations: the same window again (here split
    over two calls) reuses them, another window, or the same tensor changed in place, does not;
    every call equals naive ISM."""
    rng = np.random.default_rng(4)
    model = randomize(conv1d_toy(60), 4)
    a, b = (torch.from_numpy(one_hot(random_tokens(rng, 60))) for _ in range(2))
    off, alt = torch.arange(60).repeat_interleave(4), torch.arange(4).repeat(60)

    def check(x, rows):
        fast = predict_substitutions(model, x, off[rows], alt[rows], "incremental")[1]
        naive = predict_substitutions(model, x, off[rows], alt[rows], "naive")[1]
        assert (fast - naive).abs().max() <= ROUNDING_FACTOR * float32_rounding(model, x[None], "diff")

    for x, rows in ((a, slice(0, 120)), (a, slice(120, 240)), (b, slice(None)), (a, slice(None))):
        check(x, rows)
    assert torch.equal(fast_ism.get_plan(model, 60).window[0], a)
    a[:, 30] = torch.tensor([0.0, 0.0, 1.0, 0.0]) if a[2, 30] == 0 else torch.tensor([1.0, 0.0, 0.0, 0.0])
    check(a, slice(None))


@pytest.mark.parametrize("device", DEVICES)
def test_same_code_path_on_each_device(device):
    rng = np.random.default_rng(12)
    model = randomize(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10), 12)
    assert_exact(model, random_tokens(rng, 403), device=device, batch_size=256)


# ---------------------------------------------------------------------------------------------
# analysis and fallback

def test_fast_path_is_taken_for_beluga_like_models():
    ok, detail = analysable(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10).eval(), 403)
    assert ok and "maxpool" in detail and "dense 16x" in detail
    assert analysable(randomize(Conv2dChain(150), 0), 150)[0]
    plan = fast_ism.get_plan(BelugaFamily(2000, (32, 48, 64), 8, 4, 20, 20).eval(), 2000)
    assert plan.widths() == \
        [8, 15, 5, 12, 19, 6, 13, 20]   # the receptive-field widths of the issue


class InlineFlatten(nn.Module):
    """Flatten and sigmoid written inline in ``forward`` (as most user models do)."""

    def __init__(self, length=60):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(8 * ((length - 4) // 2), 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return torch.sigmoid(self.fc(x.view(x.size(0), -1)))


def test_inline_flatten_and_sigmoid():
    from seqmux.ism import logit_model

    model = randomize(InlineFlatten(), 21)
    head = logit_model(model)
    assert head is not None and analysable(head, 60)[0] and analysable(model, 60)[0]
    assert_exact(model, random_tokens(np.random.default_rng(21), 60), batch_size=16)


def test_fast_path_really_runs(monkeypatch):
    """substitution_effects(method="fast"), as the target stage calls it, runs the incremental
    code, not naive ISM."""
    import seqmux.ism as ism

    model = randomize(BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10), 1)
    tokens = random_tokens(np.random.default_rng(1), 403)
    x = torch.from_numpy(one_hot(tokens))
    off, alt = (torch.from_numpy(a.astype(np.int64)) for a in substitutions(tokens))

    def forbidden(*args, **kwargs):
        raise AssertionError("naive ISM called")

    monkeypatch.setattr(ism, "naive_substitution_predictions", forbidden)
    ref, out = substitution_effects(model, x, off, alt, "logfold", "fast")
    assert out.shape == (len(off), 10)


class DataDependent(nn.Module):
    """Python control flow on the input's values: no trace can follow it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 62, 3), nn.Sigmoid())

    def forward(self, x):
        h = self.conv(x)
        return self.head(h if h.sum() > 0 else -h)


@pytest.mark.parametrize("model, length, why", [(DataDependent(), 64, "cannot be captured"),
                                                (Recurrent(), 64, "no position-local layer")],
                         ids=["data-dependent", "gru"])
def test_unanalysable_models_fall_back_to_naive(model, length, why, caplog):
    model = randomize(model, 0)
    ok, reason = analysable(model, length)
    assert not ok and why in reason
    tokens = random_tokens(np.random.default_rng(0), length)
    with caplog.at_level(logging.INFO, logger="seqmux.fast_ism"):
        fast, naive = ism_both(model, tokens, batch_size=64)
        ism_both(model, tokens)           # a second window: no second log line
    assert torch.equal(fast, naive)
    lines = [r for r in caplog.records if "naive ISM" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0].getMessage()
    x = torch.from_numpy(one_hot(tokens))
    assert fast_substitution_predictions(model, x, torch.tensor([1]), torch.tensor([2])) is None


def test_training_mode_is_refused_and_layers_without_a_rule_run_in_full():
    model = BelugaFamily(403, (12, 16, 16), 8, 4, 32, 10)
    ok, reason = analysable(model.train(), 403)
    assert not ok and "training mode" in reason
    assert analysable(model.eval(), 403)[0]
    odd = randomize(nn.Sequential(nn.Conv1d(4, 4, 3), nn.Upsample(scale_factor=2), nn.Flatten(),
                                  nn.Linear(4 * 124, 2), nn.Sigmoid()), 3)
    ok, detail = analysable(odd, 64)
    assert ok and "full: 4 operations" in detail    # upsample, flatten, linear, sigmoid
    assert_exact(odd, random_tokens(np.random.default_rng(3), 64))


# ---------------------------------------------------------------------------------------------
# models as users bring them

def test_legacy_beluga_takes_the_fast_path():
    """Beluga written with Lambda modules (``len(x.size())`` in a lambda, ``view(x.size(0), -1)``,
    ``unsqueeze(2)`` and (1, k) Conv2d): captured, the same plan as BelugaFamily's, exact; it
    loads BelugaFamily's state dict (the published keys) unchanged and gives the same outputs."""
    from seqmux.architectures import LegacyBeluga

    sizes = dict(length=403, channels=(12, 16, 16), kernel=8, pool=4, hidden=32, n_outputs=10)
    family = randomize(BelugaFamily(**sizes), 13)
    legacy = LegacyBeluga(**sizes)
    legacy.load_state_dict(family.state_dict())
    legacy.eval()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(legacy)           # what made it fall back to naive ISM before
    assert analysable(legacy, 403) == analysable(family, 403)
    tokens = random_tokens(np.random.default_rng(13), 403)
    x = torch.from_numpy(one_hot(tokens))[None]
    with torch.no_grad():
        assert torch.equal(legacy(x), family(x))
    dev = assert_exact(legacy, tokens, batch_size=128)
    fast_family, _ = ism_both(family, tokens, batch_size=128)
    fast_legacy, _ = ism_both(legacy, tokens, batch_size=128)
    assert torch.equal(fast_family, fast_legacy), dev


def test_legacy_beluga_has_the_published_state_dict():
    import json
    from importlib.resources import files

    from seqmux.architectures import LegacyBeluga

    published = json.loads(files("seqmux").joinpath("data/published_layouts.json").read_text())["beluga"]["state_dict"]
    with torch.device("meta"):
        model = LegacyBeluga()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == published


class Zoo(nn.Module):
    """One of each layer the fast path covers, in a DAG: padded, strided and dilated Conv1d, GELU,
    Softplus, exp, square, sigmoid, arithmetic with constants, a per-channel scale, batch norm,
    average and padded max pooling, a residual addition of a cropped branch, products of two
    branches, then two heads (flatten + dense, and a global max run in full)."""

    def __init__(self, length=96):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, dilation=2)              # 'valid': 4 positions shorter
        self.c3 = nn.Conv1d(8, 8, 4, stride=2, padding=1)
        self.pool = nn.AvgPool1d(2)
        self.mpool = nn.MaxPool1d(3, stride=2, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1))
        w = ((length - 4) + 2 - 4) // 2 + 1                   # c3's output length
        w = (w // 2 + 2 - 3) // 2 + 1                         # after pool and mpool
        self.fc = nn.Linear(8 * w, 6)
        self.out = nn.Linear(6 + 8, 4)

    def forward(self, x):
        h = nn.functional.gelu(self.bn(self.c1(x)))
        g = nn.functional.softplus(self.c2(h))
        h = h[:, :, 2:-2] + g * self.scale                     # crop, residual, per-channel scale
        h = h * torch.sigmoid(h)                               # product of two local activations
        h = torch.relu(self.c3(h * torch.exp(-0.1 * h.square())))
        h = self.mpool(self.pool(h))
        dense = torch.tanh(self.fc(torch.flatten(h, 1)))
        peak = h.amax(dim=-1)                                  # global max: run in full
        return torch.sigmoid(self.out(torch.cat([dense, peak], 1)))


def test_layer_zoo_in_a_graph():
    model = randomize(Zoo(96), 31)
    ok, detail = analysable(model, 96)
    assert ok and "add" in detail and "mul" in detail and "crop" in detail and "full:" in detail
    assert_exact(model, random_tokens(np.random.default_rng(31), 96), batch_size=40)


def test_residual_model():
    assert_exact(randomize(Residual(64), 0), random_tokens(np.random.default_rng(0), 64), batch_size=50)


def test_basset_like():
    from seqmux.architectures import BassetLike

    model = randomize(BassetLike(200, (16, 12, 12), (9, 5, 3), (3, 2, 2), 24, 7), 41)
    ok, detail = analysable(model, 200)
    assert ok and detail.startswith("conv(delta)[9] -> maxpool") and "dense 12x" in detail
    assert_exact(model, random_tokens(np.random.default_rng(41), 200), batch_size=64)


def test_bpnet_like():
    """Dilated residual stack (windows that outgrow the activation), a crop and a global mean."""
    from seqmux.architectures import BPNetLike

    model = randomize(nn.Sequential(BPNetLike(160, 8, 9, 5, 16, 3), nn.Sigmoid()), 51, gain=0.7)
    ok, detail = analysable(model, 160)
    assert ok and detail.count("add[") == 5 and "crop" in detail
    assert_exact(model, random_tokens(np.random.default_rng(51), 160), batch_size=100)


LEGACY_FILE = '''
import torch
from torch import nn


class LambdaBase(nn.Sequential):
    def __init__(self, fn, *args):
        super().__init__(*args)
        self.lambda_func = fn

    def forward_prepare(self, input):
        output = [module(input) for module in self._modules.values()]
        return output if output else input


class Lambda(LambdaBase):
    def forward(self, input):
        return self.lambda_func(self.forward_prepare(input))


class SmallLegacyBeluga(nn.Module):
    length = 200

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 16, (1, 8)), nn.ReLU(), nn.Conv2d(16, 16, (1, 8)), nn.ReLU(),
                          nn.Dropout(0.2), nn.MaxPool2d((1, 4), (1, 4)), nn.Conv2d(16, 24, (1, 8)), nn.ReLU()),
            nn.Sequential(nn.Dropout(0.5), Lambda(lambda x: x.view(x.size(0), -1)),
                          nn.Sequential(Lambda(lambda x: x.view(1, -1) if 1 == len(x.size()) else x),
                                        nn.Linear(24 * 39, 12)), nn.ReLU(),
                          nn.Sequential(Lambda(lambda x: x.view(1, -1) if 1 == len(x.size()) else x),
                                        nn.Linear(12, 5))),
            nn.Sigmoid())

    def forward(self, x):
        return self.model(x.unsqueeze(2))
'''


def test_a_users_legacy_model_file_takes_the_fast_path(tmp_path, monkeypatch, caplog):
    """A user's own file in the published repository's style (LambdaBase/Lambda classes, lambdas
    that branch on ``len(x.size())``), loaded as ``base_model.kind: custom`` loads it: the target
    computation never calls naive ISM, the effects come from the logits, and they equal naive
    ISM's to float32 rounding; the same call twice gives the same bytes."""
    import seqmux.ism as ism
    from seqmux.models import load_custom_class

    path = tmp_path / "legacy_model.py"
    path.write_text(LEGACY_FILE)
    model = load_custom_class(str(path), "SmallLegacyBeluga")().eval()
    tokens = random_tokens(np.random.default_rng(8), 200)
    x = torch.from_numpy(one_hot(tokens))
    off, alt = (torch.from_numpy(a.astype(np.int64)) for a in substitutions(tokens))
    with caplog.at_level(logging.INFO):
        naive = substitution_effects(model, x, off, alt, "logfold", "naive")[1]
    assert any("effects computed from its logits" in r.getMessage() for r in caplog.records)

    def forbidden(*args, **kwargs):
        raise AssertionError("naive ISM called")

    monkeypatch.setattr(ism, "naive_substitution_predictions", forbidden)
    _, fast = substitution_effects(model, x, off, alt, "logfold", "fast")
    assert (fast - naive).abs().max().item() <= tolerance(model, tokens)
    _, again = substitution_effects(model, x, off, alt, "logfold", "fast")
    assert torch.equal(fast, again)


# ---------------------------------------------------------------------------------------------
# coverage: a Conv2d over the base axis, attention after a convolutional stem, branches

class BasesConv2d(nn.Module):
    """``x.unsqueeze(1)`` ``[B, 1, 4, L]`` and a Conv2d whose kernel spans the 4 bases, then
    ``(1, k)`` pooling and a strided ``(1, k)`` convolution."""

    def __init__(self, length=90):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, (4, 7), padding=(0, 3))
        self.pool = nn.MaxPool2d((1, 3))
        self.conv2 = nn.Conv2d(10, 8, (1, 5), stride=(1, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * ((length // 3 - 5) // 2 + 1), 4), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.conv2(self.pool(torch.relu(self.conv(x.unsqueeze(1))))))


class ConvAttention(nn.Module):
    """A convolutional stem, then a transformer encoder layer over its positions (run in full
    from the stem's spliced activations), a mean over positions and a dense head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(61)
        self.stem = nn.Sequential(nn.Conv1d(4, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2))
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Sequential(nn.Linear(16, 3), nn.Sigmoid())

    def forward(self, x):
        return self.head(self.block(self.stem(x).transpose(1, 2)).mean(1))


class ConvSelfAttention(nn.Module):
    """Multi-head self-attention on a convolutional stem, a residual and a layer norm."""

    def __init__(self, length=64):
        super().__init__()
        torch.manual_seed(62)
        self.conv = nn.Conv1d(4, 16, 9, padding=4)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * length, 3), nn.Sigmoid())

    def forward(self, x):
        h = torch.relu(self.conv(x)).permute(0, 2, 1)
        a, _ = self.attention(h, h, h)
        return self.head(self.norm(h + a))


class Branches(nn.Module):
    """Local branches of different widths, concatenated and summed, before the next convolution."""

    def __init__(self, length=80):
        super().__init__()
        self.a, self.b = nn.Conv1d(4, 6, 5, padding=2), nn.Conv1d(4, 4, 11, padding=5)
        self.c = nn.Conv1d(4, 10, 3, padding=1)
        self.d = nn.Conv1d(10, 8, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * (length - 2), 3), nn.Sigmoid())

    def forward(self, x):
        h = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1) + self.c(x))
        return self.head(self.d(torch.cat((h[:, :4], torch.tanh(h[:, 4:])), 1)))


def test_conv2d_over_the_base_axis_takes_the_fast_path():
    model = randomize(BasesConv2d(90), 60)
    ok, detail = analysable(model, 90)
    assert ok and detail.startswith("conv(delta)[7] -> maxpool"), detail
    assert_exact(model, random_tokens(np.random.default_rng(60), 90), batch_size=64)


@pytest.mark.parametrize("cls, length", [(ConvAttention, 70), (ConvSelfAttention, 64)])
def test_attention_after_a_conv_stem_runs_in_full_from_the_stem(cls, length):
    model = randomize(cls(), 61)
    ok, detail = analysable(model, length)
    assert ok and detail.startswith("conv(delta)[") and "full:" in detail, detail
    assert_exact(model, random_tokens(np.random.default_rng(length), length), batch_size=48)


def test_sums_and_concatenations_of_local_branches():
    model = randomize(Branches(80), 63)
    ok, detail = analysable(model, 80)
    assert ok and detail.count("cat[") == 2 and "add[" in detail and "dense 8x78->3 -> full: 1 " in detail, detail
    assert_exact(model, random_tokens(np.random.default_rng(63), 80), batch_size=60)


@pytest.mark.parametrize("way", ["gathered", "whole", "groups"])
def test_every_way_of_the_first_dense_layer_equals_naive_ism(way, monkeypatch):
    """The first dense layer's three ways (each mutant's own weight columns in one batched GEMM,
    one GEMM over the whole activation, one GEMM per group of window starts) give naive ISM's
    answer to float32 rounding, and the schedule says which ran. Two windows with the same
    substituted positions share one schedule."""
    if way != "gathered":
        monkeypatch.setattr(fast_ism, "GATHERED_ENTRIES", 0)
        monkeypatch.setattr(fast_ism, "_dense_whole", lambda *args: way == "whole")
    model = randomize(conv1d_toy(120), 6)
    rng = np.random.default_rng(6)
    tokens = [random_tokens(rng, 120, n_count=0) for _ in range(2)]
    for t in tokens:
        fast, naive = ism_both(model, t, batch_size=50)
        assert (fast - naive).abs().max().item() <= tolerance(model, t)
    plan = fast_ism.get_plan(logit_model(model, 120), 120)     # effects come from its logits
    ways = {w[0] for schedule in plan.schedules.values() for chunk in schedule.chunks for w in chunk.dense}
    assert ways == {way}
    assert len(plan.schedules) == 1     # substitutions(tokens): three a position, the same positions


class LengthReductions(nn.Module):
    """Sums and means over the length axis of local activations (with and without keepdim, as a
    method and as a function), then dense layers: ``_Reduce`` nodes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.conv2 = nn.Conv1d(6, 6, 3)
        self.dense = nn.Linear(18, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        g = torch.tanh(self.conv2(h))
        pooled = [h.sum(-1, keepdim=True).flatten(1), torch.mean(h, dim=2), g.mean(-1)]
        return torch.sigmoid(self.dense(torch.cat(pooled, 1)))


def test_sums_and_means_over_the_length_take_the_fast_path():
    model = randomize(LengthReductions(), 8)
    ok, detail = analysable(model, 90)
    assert ok and detail.count("sum[") == 1 and detail.count("mean[") == 2, detail
    assert_exact(model, random_tokens(np.random.default_rng(8), 90), batch_size=64)
