"""ISM as a library a model author imports (``seqmux.ism.predict_substitutions``): any forward
signature (``args`` / ``kwargs``), any head (``output``), any input dtype, any mode; each case is
checked against brute-force forward passes written here, through the fast path (naive ISM is
forbidden where the fast path must run) and the naive one."""

import numpy as np
import pytest
import torch
from torch import nn

import seqmux.ism as ism
from seqmux.errors import InputError
from seqmux.fast_ism import analysable
from seqmux.ism import (Bound, OutputSelectionError, predict_substitutions, substitution_effects,
                        window_targets)
from seqmux.models import build_base_model, count_outputs

L = 48


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def window(seed, length=L, n_columns=(3,)):
    """A random one-hot window ``[4, L]`` (float64) with all-zero (N) columns at ``n_columns``."""
    gen = torch.Generator().manual_seed(seed)
    x = nn.functional.one_hot(torch.randint(0, 4, (length,), generator=gen), 4).T.double()
    x[:, list(n_columns)] = 0.0
    return x


def every_substitution(length=L):
    offsets = torch.arange(length).repeat_interleave(4)
    return offsets, torch.arange(4).repeat(length)


@torch.no_grad()
def brute_force(fn, x, offsets, alts):
    """``fn`` on each mutated copy of ``x [4, L]``, one forward pass per substitution."""
    rows = []
    for p, b in zip(offsets.tolist(), alts.tolist()):
        m = x.clone()
        m[:, p] = 0.0
        m[b, p] = 1.0
        rows.append(fn(m[None])[0])
    return torch.stack(rows)


def seeded(model, seed):
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.4)
    return model.double().eval()


def forbid_naive(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("naive ISM called where the fast path must run")

    monkeypatch.setattr(ism, "naive_substitution_predictions", forbidden)


class TwoHeads(nn.Module):
    """A convolutional stem with two dense heads (a profile-and-count style model)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.pool = nn.MaxPool1d(2)
        self.a = nn.Linear(6 * L // 2, 5)
        self.b = nn.Linear(6 * L // 2, 3)

    def trunk(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)

    def forward(self, x):
        h = self.trunk(x)
        return self.a(h), torch.sigmoid(self.b(h))


class DictHeads(TwoHeads):
    def forward(self, x):
        h = self.trunk(x)
        return {"profile": self.a(h), "count": torch.sigmoid(self.b(h))}


class ExtraInputs(nn.Module):
    """``forward(x, shift, cell, scale=1.0)``: a per-channel shift, an extra per-window input
    joined after the dense layer, a scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 7, padding=3)
        self.dense = nn.Linear(6 * L, 8)
        self.out = nn.Linear(8 + 2, 4)

    def forward(self, x, shift, cell, scale=1.0):
        h = torch.relu(self.conv(x) * scale + shift).flatten(1)
        z = torch.relu(self.dense(h))
        return self.out(torch.cat([z, cell.expand(x.shape[0], -1)], 1))


class Noisy(nn.Module):
    """Batch norm and dropout: different in train mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Linear(6 * (L - 4), 4), nn.Dropout(0.3))

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.norm(self.conv(x)))).flatten(1))


class Counting(nn.Module):
    """A forward that mutates its module."""

    def __init__(self):
        super().__init__()
        self.rows = 0
        self.conv = nn.Conv1d(4, 5, 5, padding=2)
        self.lin = nn.Linear(5 * L, 3)

    def forward(self, x):
        self.rows += x.shape[0]
        return torch.sigmoid(self.lin(torch.relu(self.conv(x)).flatten(1)))


@pytest.mark.parametrize("method", ["incremental", "naive"])
@pytest.mark.parametrize("cls, output, head", [(TwoHeads, 0, 0), (TwoHeads, 1, 1), (TwoHeads, -1, 1),
                                               (DictHeads, "count", "count"), (DictHeads, 0, "profile")])
def test_a_chosen_head_of_a_tuple_or_dict(cls, output, head, method, monkeypatch):
    model = seeded(cls(), 1)
    x, (off, alt) = window(1), every_substitution()
    if method == "incremental":
        forbid_naive(monkeypatch)
    ref, out = predict_substitutions(model, x, off, alt, method, 37, output=output)
    expected = brute_force(lambda m: model(m)[head], x, off, alt)
    assert torch.equal(ref, model(x[None])[head][0])
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def test_several_heads_and_none_chosen_is_an_error_naming_the_choices():
    x, (off, alt) = window(2), every_substitution()
    with pytest.raises(OutputSelectionError, match=r"a tuple of 2 outputs \(0: tensor \[1, 5\], 1: tensor \[1, 3\]\)"
                       r": choose one with output=<index>"):
        predict_substitutions(seeded(TwoHeads(), 2), x, off, alt, "incremental")
    with pytest.raises(OutputSelectionError, match="'profile': tensor .1, 5., 'count': tensor .1, 3."):
        predict_substitutions(seeded(DictHeads(), 2), x, off, alt, "naive")
    with pytest.raises(OutputSelectionError, match="output=2 is none of the model's outputs"):
        predict_substitutions(seeded(TwoHeads(), 2), x, off, alt, "incremental", output=2)
    with pytest.raises(OutputSelectionError, match="leave output unset"):
        predict_substitutions(seeded(Counting(), 2), x, off, alt, "incremental", output=0)


def test_effects_of_a_sigmoid_head_come_from_its_logits(monkeypatch):
    """``substitution_effects`` on a chosen head ending in a sigmoid: from its logits, exact."""
    model = seeded(TwoHeads(), 3)
    x, (off, alt) = window(3), every_substitution()
    forbid_naive(monkeypatch)
    ref, eff = substitution_effects(model, x, off, alt, "diff", "incremental", output=1)
    probs = brute_force(lambda m: model(m)[1], x, off, alt)
    assert torch.allclose(ref, model(x[None])[1][0], rtol=0, atol=1e-15)
    assert torch.allclose(eff, probs - ref, rtol=0, atol=1e-12)
    tokens = x.argmax(0).numpy().astype(np.uint8)
    tokens[3] = 4                                      # the N column
    _, target = window_targets(model, tokens, off.numpy(), alt.numpy(), "diff", "incremental", output=1)
    assert target.shape == (3, 4, L)
    assert np.allclose(target[:, alt.numpy(), off.numpy()], eff.T.float().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_extra_arguments_reach_every_forward_call(method, monkeypatch):
    model = seeded(ExtraInputs(), 4)
    x, (off, alt) = window(4), every_substitution()
    gen = torch.Generator().manual_seed(4)
    shift = torch.randn(1, 6, 1, generator=gen, dtype=torch.float64)
    cell = torch.randn(1, 2, generator=gen, dtype=torch.float64)
    if method == "incremental":
        forbid_naive(monkeypatch)
    ref, out = predict_substitutions(model, x, off, alt, method, 50, args=(shift, cell), kwargs={"scale": 1.7})
    expected = brute_force(lambda m: model(m, shift, cell, scale=1.7), x, off, alt)
    assert torch.allclose(ref, model(x[None], shift, cell, scale=1.7)[0], rtol=0, atol=1e-15)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    # other arguments, other answers (the plan is not reused across them)
    _, other = predict_substitutions(model, x, off, alt, method, 50, args=(shift, cell), kwargs={"scale": 0.5})
    assert torch.allclose(other, brute_force(lambda m: model(m, shift, cell, scale=0.5), x, off, alt),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8, torch.int64])
def test_input_is_cast_to_the_models_dtype(dtype, monkeypatch):
    """A float32 model given float64 or integer one-hot: the answer of float32 input, bit for bit."""
    model = seeded(TwoHeads(), 5).float()
    x, (off, alt) = window(5), every_substitution()
    forbid_naive(monkeypatch)
    ref32, out32 = predict_substitutions(model, x.float(), off, alt, "incremental", output=0)
    ref, out = predict_substitutions(model, x.to(dtype), off.int(), alt.short(), "incremental", output=0)
    assert out.dtype == torch.float32 and torch.equal(out, out32) and torch.equal(ref, ref32)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_train_mode_runs_as_eval_and_is_restored(method, monkeypatch):
    model = seeded(Noisy(), 6)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.3, 0.3)
        model.norm.running_var.uniform_(0.5, 1.5)
    x, (off, alt) = window(6), every_substitution()
    expected = brute_force(model, x, off, alt)         # eval mode
    model.train()
    model.head[1].eval()                               # a mixed state, as it was
    if method == "incremental":
        forbid_naive(monkeypatch)
    _, out = predict_substitutions(model, x, off, alt, method)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert model.training and model.norm.training and model.drop.training and not model.head[1].training


def test_capture_leaves_no_trace_in_the_model(monkeypatch):
    model = seeded(Counting(), 7)
    before = {m: set(vars(m)) for m in model.modules()}
    x, (off, alt) = window(7), every_substitution()
    forbid_naive(monkeypatch)
    ok, why = analysable(model, L)
    assert ok, why
    _, eff = substitution_effects(model, x, off, alt, "diff", "incremental")       # traced for its logits too
    assert type(model.rows) is int
    assert {m: set(vars(m)) for m in model.modules()} == before
    rows = model.rows
    model(x[None])
    assert model.rows == rows + 1
    expected = brute_force(model, x, off, alt) - model(x[None])[0]
    assert torch.allclose(eff, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_identity_substitutions_are_exactly_the_reference(method):
    """On the fast path, on naive ISM and on the fast path's fallback (a float32 model, where a
    recomputed row would differ in its last bits)."""

    class Branchy(TwoHeads):                          # data-dependent control flow: no fast path
        def forward(self, x):
            h = self.trunk(x)
            return self.a(h) if h.sum() > 0 else -self.a(h)

    x = window(8).float()
    off, alt = every_substitution()
    for model in (seeded(TwoHeads(), 8).float(), seeded(Branchy(), 8).float()):
        ref, out = predict_substitutions(model, x, off, alt, method, 7, output=0 if type(model) is TwoHeads else None)
        identity = (x[alt, off] == 1.0)
        assert identity.sum() == L - 1
        assert torch.equal(out[identity], ref.expand(int(identity.sum()), -1))


@pytest.mark.parametrize("offsets, alts, match", [
    ([-1], [0], r"offset -1 \(substitution 0\) is outside the window of 48 positions \(0..47\)"),
    ([0, 48], [0, 1], r"offset 48 \(substitution 1\) is outside the window"),
    ([5], [4], r"alt 4 \(substitution 0\) is not a base index"),
    ([5, 6], [1], "2 offsets but 1 alts"),
])
@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_offsets_outside_the_window_are_refused(offsets, alts, match, method):
    with pytest.raises(ValueError, match=match):
        predict_substitutions(seeded(Counting(), 9), window(9), torch.tensor(offsets), torch.tensor(alts), method)


def test_count_outputs_names_the_heads_and_the_config_field(tmp_path):
    module = tmp_path / "heads.py"
    module.write_text("import torch\nfrom torch import nn\n\n\nclass Heads(nn.Module):\n"
                      "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv1d(4, 3, 5)\n\n"
                      "    def forward(self, x):\n        h = self.conv(x).mean(-1)\n"
                      "        return {'profile': h, 'count': torch.sigmoid(h[:, :2])}\n")
    model = build_base_model("custom", module=str(module), class_name="Heads")
    with pytest.raises(InputError, match=r"base_model.output='': the model returns a dict of 2 outputs "
                                         r"\('profile': tensor \[1, 3\], 'count': tensor \[1, 2\]\): choose one"):
        count_outputs(model, 40)
    chosen = build_base_model("custom", module=str(module), class_name="Heads", output="count")
    assert isinstance(chosen, Bound) and not chosen.training and count_outputs(chosen, 40) == 2
    assert count_outputs(build_base_model("custom", module=str(module), class_name="Heads", output=0), 40) == 3
    with pytest.raises(InputError, match="base_model.output='counts': output='counts' is none of the model's"):
        count_outputs(build_base_model("custom", module=str(module), class_name="Heads", output="counts"), 40)


def test_fast_picks_naive_ism_where_the_plan_says_it_is_faster(monkeypatch, caplog):
    """On a model too small for incremental ISM to pay off (two convolutions, each with a max
    pooling, on a 16 bp window: incremental ISM's small operations per layer outnumber naive ISM's
    one batched forward pass), ``fast`` runs naive ISM, says so once in the log, and gives naive
    ISM's answer."""
    import logging

    from seqmux import fast_ism

    length = 16
    model = seeded(nn.Sequential(nn.Conv1d(4, 4, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                                 nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                 nn.Flatten(), nn.Linear(length, 3)), 10)
    x, (off, alt) = window(10, length), every_substitution(length)
    assert analysable(model, length)[0]

    def forbidden(*args, **kwargs):
        raise AssertionError("incremental ISM ran")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="seqmux.fast_ism"):
        patch.setattr(fast_ism, "_run_chunk", forbidden)
        _, out = predict_substitutions(model, x, off, alt, "fast")
        predict_substitutions(model, window(11, length), off, alt, "fast")
    lines = [r.getMessage() for r in caplog.records if "naive ISM" in r.getMessage()]
    assert len(lines) == 1 and "is faster with naive ISM (the cost model expects" in lines[0], lines
    assert torch.allclose(out, brute_force(model, x, off, alt), rtol=0, atol=1e-12)
    _, incremental = predict_substitutions(model, x, off, alt, "incremental")     # still available
    assert torch.allclose(incremental, out, rtol=0, atol=1e-12)


def test_the_reference_output_is_reused_only_while_nothing_changed():
    """A repeated call on the same window reuses the model's reference output (a copy: the
    caller may change it); new weights (changed in place), a window changed in place or another
    argument give the new reference and the new answer."""
    model = seeded(nn.Sequential(nn.Conv1d(4, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (L - 4), 2)), 3)
    x, (off, alt) = window(3), every_substitution()
    ref, out = predict_substitutions(model, x, off, alt, "fast")
    ref.add_(1.0)
    again, out2 = predict_substitutions(model, x, off, alt, "fast")
    assert torch.equal(again, model(x[None])[0]) and torch.equal(out2, out)
    with torch.no_grad():
        model[3].bias.add_(1.0)
    ref3, out3 = predict_substitutions(model, x, off, alt, "fast")
    assert torch.equal(ref3, model(x[None])[0])
    assert torch.allclose(out3, brute_force(model, x, off, alt), rtol=0, atol=1e-12)
    x[:, 10] = torch.tensor([0.0, 0.0, 0.0, 1.0]) if x[3, 10] == 0 else torch.tensor([1.0, 0.0, 0.0, 0.0])
    ref4, out4 = predict_substitutions(model, x, off, alt, "fast")
    assert torch.equal(ref4, model(x[None])[0])
    assert torch.allclose(out4, brute_force(model, x, off, alt), rtol=0, atol=1e-12)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, scale):
            return self.net(x) * scale

    scaled = Scaled().eval()
    for s in (2.0, 3.0):
        ref5, out5 = predict_substitutions(scaled, x, off, alt, "fast", args=(torch.tensor(s),))
        assert torch.equal(ref5, model(x[None])[0] * s)
        assert torch.allclose(out5, brute_force(model, x, off, alt) * s, rtol=0, atol=1e-12)


def test_kept_substitutions_follow_the_offsets_the_bases_and_the_window():
    """The checks, identity rows and schedule of a set of substitutions are kept between calls by
    their bytes: offsets changed in place (also through their numpy view, which a tensor's version
    does not see), other bases, another window with the same substitutions, or a bad offset after
    good calls, each gives its own answer (brute force), identity rows and error."""
    model = seeded(nn.Sequential(nn.Conv1d(4, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (L - 4), 2)), 5)
    x, y = window(5), window(6)
    off, alt = torch.arange(L).repeat_interleave(2), torch.tensor([0, 2]).repeat(L)
    for _ in range(2):
        _, out = predict_substitutions(model, x, off, alt, "fast")
        assert torch.allclose(out, brute_force(model, x, off, alt), rtol=0, atol=1e-12)
    off.numpy()[:4] = [40, 41, 42, 43]          # in place through numpy: the tensor's version unchanged
    alt[-1] = 3
    for window_ in (x, y, x):
        ref, out = predict_substitutions(model, window_, off, alt, "fast")
        assert torch.allclose(out, brute_force(model, window_, off, alt), rtol=0, atol=1e-12)
        identity = window_[alt, off] == 1.0
        assert identity.any() and torch.equal(out[identity], ref.expand(int(identity.sum()), -1))
    off[0] = L
    with pytest.raises(ValueError, match=r"offset 48 \(substitution 0\) is outside the window"):
        predict_substitutions(model, x, off, alt, "fast")


class Unsqueezed(nn.Module):
    """A (1, k) Conv2d on ``x.unsqueeze(2)``: a ``[B, C, 1, L]`` output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, (1, 5))

    def forward(self, x):
        return torch.relu(self.conv(x.unsqueeze(2)))


@pytest.mark.parametrize("head", ["flatten", "profile", "unsqueezed"])
def test_a_local_output_written_straight_into_the_result(head):
    """Substitutions without identity rows, in order (the incremental path writes a local output
    activation straight into the result rows): a flattened, a profile and a 4-d output each
    equal brute force."""
    conv = nn.Conv1d(4, 3, 5, padding=2 if head != "flatten" else 0)
    layers = {"flatten": [conv, nn.Flatten()], "profile": [conv, nn.ReLU()], "unsqueezed": [Unsqueezed()]}[head]
    model = seeded(nn.Sequential(*layers), 1)
    assert analysable(model, L)[0]
    x, (off, alt) = window(1, n_columns=()), every_substitution()
    keep = x[alt, off] != 1
    off, alt = off[keep], alt[keep]
    _, out = predict_substitutions(model, x, off, alt, "incremental")
    assert torch.allclose(out, brute_force(model, x, off, alt), rtol=0, atol=1e-12)
