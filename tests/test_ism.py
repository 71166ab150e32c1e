import copy

import numpy as np
import pytest
import torch

from conftest import ROUNDING_FACTOR, float32_rounding
from seqmux.encoding import one_hot, tokenize
from seqmux.genome import open_fasta
import seqmux.ism
from seqmux.ism import (effect_of_logits, logfold, logit_model, mutate, predict_substitutions, scatter_targets,
                        substitution_effects, window_targets)
from seqmux.models import BelugaFamily
from seqmux.models import load_model
from seqmux.variants import substitutions

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def test_logfold_formula():
    ref, alt = torch.tensor([0.2]), torch.tensor([0.6])
    e = 1e-6
    expected = np.log(((0.6 + e) * (1 - 0.2 + e)) / ((1 - 0.6 + e) * (0.2 + e)))
    assert logfold(alt, ref).item() == pytest.approx(expected, rel=1e-6)
    assert logfold(ref, ref).item() == pytest.approx(0.0, abs=1e-7)


def test_mutate_puts_one_base():
    x = torch.from_numpy(one_hot(tokenize("ACGN")))
    batch = mutate(x, torch.tensor([0, 3]), torch.tensor([3, 1]))
    assert batch[0, :, 0].tolist() == [0, 0, 0, 1]
    assert batch[1, :, 3].tolist() == [0, 1, 0, 0]
    assert torch.equal(batch[0, :, 1:], x[:, 1:])


@pytest.mark.parametrize("mode", ["logfold", "diff"])
def test_every_target_equals_an_independent_forward_pass(demo_dir, mode):
    """Exactness: target[f, b, p] == effect(model(seq with base b at p)[f], model(seq)[f]).

    In float64: in float32 a sigmoid output near 1 has a resolution of 6e-8, which the log-fold
    turns into ~1e-5 of noise between any two ways of batching the same forward pass.
    """
    model = load_model(demo_dir / "model.pt").double().eval()
    fa = open_fasta(demo_dir / "genome.fa")
    letters = "AGCT"
    for chrom, start in (("chr2", 6000), ("chr5", 21000)):
        seq = fa[chrom][start:start + 400].upper()
        seq = seq[:10] + "N" + seq[11:]  # an N inside the window
        tokens = tokenize(seq)
        offsets, alts = substitutions(tokens)
        ref, target = window_targets(model, tokens, offsets, alts, mode=mode, batch_size=97)
        assert target.shape == (6, 4, 400)
        with torch.no_grad():
            base = model(torch.from_numpy(one_hot(tokens)).double()[None])[0]
            assert np.allclose(ref, base.numpy(), atol=0)
            for p in range(400):
                for b in range(4):
                    if b == tokens[p]:
                        assert np.all(target[:, b, p] == 0.0)  # identity: exactly zero
                        continue
                    mutant = seq[:p] + letters[b] + seq[p + 1:]
                    out = model(torch.from_numpy(one_hot(tokenize(mutant))).double()[None])[0]
                    want = logfold(out, base) if mode == "logfold" else out - base
                    assert np.abs(target[:, b, p] - want.numpy()).max() <= 1e-9


def test_scatter_layout_is_feature_base_position():
    t = scatter_targets(torch.tensor([[0.1, -0.1]]), torch.tensor([7]), torch.tensor([2]), 10)
    assert t.shape == (2, 4, 10)
    assert t[0, 2, 7].item() == pytest.approx(0.1) and t[1, 2, 7].item() == pytest.approx(-0.1)
    assert torch.count_nonzero(t) == 2


def test_float32_targets_match_within_tolerance(demo_dir):
    model = load_model(demo_dir / "model.pt").eval()
    fa = open_fasta(demo_dir / "genome.fa")
    tokens = tokenize(fa["chr4"][9000:9400])
    offsets, alts = substitutions(tokens)
    tol = ROUNDING_FACTOR * float32_rounding(model, one_hot(tokens)[None], mode="diff")
    _, t32 = window_targets(model, tokens, offsets, alts, mode="diff")
    _, t64 = window_targets(model.double(), tokens, offsets, alts, mode="diff")
    assert tol < 1e-5 and t32.dtype == np.float32 and np.abs(t32 - t64).max() <= tol


def test_effects_from_logits_equal_the_formula():
    z = torch.tensor([-30.0, -8.0, -1.0, 0.0, 0.5, 3.0, 9.0, 30.0], dtype=torch.float64)
    z_ref = torch.tensor([0.3], dtype=torch.float64)
    p, p_ref = torch.sigmoid(z), torch.sigmoid(z_ref)
    assert torch.allclose(effect_of_logits(z, z_ref, "logfold"), logfold(p, p_ref), rtol=1e-9, atol=1e-9)
    assert torch.allclose(effect_of_logits(z, z_ref, "diff"), p - p_ref, rtol=0, atol=1e-12)
    assert torch.equal(effect_of_logits(z, z, "logfold"), torch.zeros_like(z))   # identity: exactly 0
    assert effect_of_logits(z.float(), z_ref.float(), "logfold").dtype == torch.float32


def test_logit_model_drops_only_a_final_sigmoid():
    model = BelugaFamily(403, (8, 8, 8), 8, 4, 16, 5).eval()
    x = torch.from_numpy(one_hot(np.random.default_rng(0).integers(0, 4, (3, 403)).astype(np.uint8)))
    head = logit_model(model)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(head(x)), model(x), atol=1e-7)
        model.model[1][4][1].bias += 1.0            # shares the model's weights
        assert torch.allclose(torch.sigmoid(head(x)), model(x), atol=1e-7)
    assert logit_model(model) is head               # built once per model
    assert logit_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 403, 2))) is None


def test_logit_model_is_in_the_models_mode():
    """The logit model's own modules (its root, the containers of the shared layers) take the
    model's mode: a caller that saves its mode, switches to eval and restores it (as tangermeme's
    calls do) leaves the model's dropout off. Left in training mode, that restore switched the
    shared dropout layers on, and every later output of the model was random."""
    model = BelugaFamily(403, (8, 8, 8), 8, 4, 16, 5).eval()
    head = logit_model(model, 403)
    assert not any(m.training for m in head.modules())
    was_training = head.training                    # a caller's save, eval and restore
    head.eval()
    if was_training:
        head.train()
    assert not any(m.training for m in model.modules())
    x = torch.from_numpy(one_hot(np.random.default_rng(1).integers(0, 4, (2, 403)).astype(np.uint8)))
    with torch.no_grad():
        assert torch.equal(head(x), head(x))


@pytest.mark.parametrize("sigmoid", [True, False])
def test_effect_formula_runs_on_one_cpu_thread(monkeypatch, sigmoid):
    """Split between threads, torch's log/sigmoid can give other last bits from one process to the
    next: the effect formulas run on one CPU thread, and the thread count is restored after."""
    seen = []
    for name in ("effect_of_logits", "effect"):
        original = getattr(seqmux.ism, name)
        monkeypatch.setattr(seqmux.ism, name,
                            lambda *a, _f=original: seen.append(torch.get_num_threads()) or _f(*a))
    layers = [torch.nn.Flatten(), torch.nn.Linear(4 * 40, 3)] + ([torch.nn.Sigmoid()] if sigmoid else [])
    model = torch.nn.Sequential(*layers).eval()
    x = torch.from_numpy(one_hot(np.random.default_rng(1).integers(0, 4, 40).astype(np.uint8)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        substitution_effects(model, x, torch.arange(40), torch.zeros(40, dtype=torch.long), "diff", "naive")
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_float32_logfold_near_saturation(demo_dir):
    """Outputs near 1, where a float32 probability has a resolution of 6e-8: log-fold targets in
    float32 (computed from the logits) still equal float64 to float32 rounding of the logits,
    whatever the batching."""
    model = load_model(demo_dir / "model.pt").eval()
    with torch.no_grad():
        model.model[1][4][1].bias += 8.0           # sigmoid(8) = 0.99966
    fa = open_fasta(demo_dir / "genome.fa")
    tokens = tokenize(fa["chr4"][9000:9400])
    offsets, alts = substitutions(tokens)
    # The tolerance, from the arithmetic (conftest.float32_rounding): a log-fold target is (up to the
    # e = 1e-6 terms) the difference of two float32 logits. Measured where it was written: rounding
    # 4.7e-6, largest target deviation 9.5e-6; a fixed 1e-5 failed on CPUs that round otherwise.
    tol = ROUNDING_FACTOR * float32_rounding(model, one_hot(tokens)[None])
    model64 = copy.deepcopy(model).double()
    ref, t32 = window_targets(model, tokens, offsets, alts, batch_size=64)
    _, t32b = window_targets(model, tokens, offsets, alts, method="naive", batch_size=501)
    _, t64 = window_targets(model64, tokens, offsets, alts)
    assert (ref > 0.999).sum() >= 3
    assert np.abs(t64).max() > 0.05                 # real effects
    assert tol < 1e-4, tol                          # float32 logits are rounded like float32
    assert np.abs(t32 - t64).max() <= tol and np.abs(t32 - t32b).max() <= tol
    # the same log-folds from float32 probabilities are off by far more
    x = torch.from_numpy(one_hot(tokens))
    off, alt = torch.from_numpy(offsets.astype(np.int64)), torch.from_numpy(alts.astype(np.int64))
    base, probs = predict_substitutions(model.float(), x, off, alt, "naive", 64)
    from_probs = scatter_targets(logfold(probs, base[None]), off, alt, 400).numpy()
    assert np.abs(from_probs - t64).max() > max(1e-4, 2 * tol)


class _Shifted(torch.nn.Module):
    """Outputs ``softplus(conv) + shift``, or ``conv * scale`` clamped to [0, 1] (no final sigmoid)."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.conv = kind, torch.nn.Conv1d(4, 3, 5)

    def forward(self, x):
        z = self.conv(x).mean(-1)
        if self.kind == "softplus":
            return torch.nn.functional.softplus(z) + 1
        if self.kind == "nan":
            return z * float("nan")
        if self.kind == "saturated":
            return (z * 1e6).clamp(0, 1)
        return torch.sigmoid(z * float("nan") if self.kind == "nan logits" else z)


@pytest.mark.parametrize("kind, mode, match", [
    ("softplus", "logfold", r"on the reference: output 0 is 1\.\d+: not a probability in \[0, 1\]"),
    ("saturated", "logfold", r"on the reference: output \d is (0|1)\.0: exactly 0 or 1, where the log-fold needs"),
    ("nan", "logfold", "on the reference: output 0 is nan: not finite"),
    ("nan", "diff", "on the reference: output 0 is nan: not finite"),
    ("nan logits", "logfold", "on the reference: logit 0 is nan: not finite"),
])
def test_unusable_model_outputs_are_refused(kind, mode, match):
    from seqmux.ism import ModelOutputError

    x = torch.from_numpy(one_hot(tokenize("ACGTTGCAAC" * 4)))
    offsets, alts = (torch.from_numpy(a.astype(np.int64)) for a in substitutions(tokenize("ACGTTGCAAC" * 4)))
    for method in ("fast", "naive"):
        with pytest.raises(ModelOutputError, match=match):
            substitution_effects(_Shifted(kind).eval(), x, offsets, alts, mode, method)


def test_diff_mode_takes_any_finite_output():
    x = torch.from_numpy(one_hot(tokenize("ACGTTGCAAC" * 4)))
    offsets, alts = (torch.from_numpy(a.astype(np.int64)) for a in substitutions(tokenize("ACGTTGCAAC" * 4)))
    ref, effects = substitution_effects(_Shifted("softplus").eval(), x, offsets, alts, "diff", "naive")
    assert bool((ref > 1).all()) and bool(torch.isfinite(effects).all())
