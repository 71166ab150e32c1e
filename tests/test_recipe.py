"""The training recipe's options: each off by default in the published layout, each one setting away."""

import numpy as np
import pytest
import torch

from mux_synthetic import tiny_splits
from seqmux import checkpoint
from seqmux.multiplexer import Multiplexer, build_multiplexer, load_multiplexer
from seqmux.train import asinh, train_multiplexer, training_loss

SIZES = dict(widths=[8, 8], dilations=[1, 2], kernel=4, head_hidden=16)


def test_weighted_loss_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred, exact = torch.randn(3, 2, 4, 10, generator=g), torch.randn(3, 2, 4, 10, generator=g)
    assert training_loss(pred, exact) == pytest.approx(float(((pred - exact) ** 2).mean()), rel=1e-6)
    w = 1 + 2.0 * exact.abs() / 0.5
    assert training_loss(pred, exact, 2.0, 0.5) == pytest.approx(float((w * (pred - exact) ** 2).sum() / w.sum()),
                                                                 rel=1e-6)
    # a weighted mean: the same error everywhere costs the same as in the plain MSE
    assert training_loss(exact + 0.3, exact, 2.0, 0.5) == pytest.approx(0.09, rel=1e-5)
    # the large effects weigh more: the same error on a large effect costs more than on a small one
    both = torch.tensor([0.01, 1.0])
    assert training_loss(both + torch.tensor([0.0, 0.1]), both, 2.0, 0.5) > training_loss(
        both + torch.tensor([0.1, 0.0]), both, 2.0, 0.5)


def test_asinh_loss_against_direct_computation():
    """``loss_asinh`` k: errors on ``c asinh(effect / c)``, ``c = k rms``: the plain (weighted) MSE for
    effects well below ``c``; above it a relative error costs about the same at every size."""
    g = torch.Generator().manual_seed(1)
    pred, exact = torch.randn(3, 2, 4, 10, generator=g), torch.randn(3, 2, 4, 10, generator=g)
    c = 3.0 * 0.5
    direct = (c * torch.asinh(pred / c) - c * torch.asinh(exact / c)) ** 2
    # two float32 implementations of asinh: a few ulps (1.2e-7) each, on differences of the same size
    assert training_loss(pred, exact, 0.0, 0.5, 3.0) == pytest.approx(float(direct.mean()), rel=1e-5)
    w = 1 + 0.6 * exact.abs() / 0.5
    assert training_loss(pred, exact, 0.6, 0.5, 3.0) == pytest.approx(float((w * direct).sum() / w.sum()), rel=1e-5)
    small = torch.full((4,), 1e-3)
    assert float(training_loss(small * 1.1, small, 0.0, 0.5, 3.0)) == pytest.approx(
        float(training_loss(small * 1.1, small)), rel=1e-4)
    big, bigger = torch.full((4,), 50 * c), torch.full((4,), 500 * c)
    rel_big = float(training_loss(big * 1.1, big, 0.0, 0.5, 3.0))
    rel_bigger = float(training_loss(bigger * 1.1, bigger, 0.0, 0.5, 3.0))
    assert rel_bigger == pytest.approx(rel_big, rel=0.01)  # plain MSE: 100 times
    assert float(training_loss(bigger * 1.1, bigger)) == pytest.approx(
        100 * float(training_loss(big * 1.1, big)), rel=1e-4)


def test_asinh_is_torch_asinh_to_float_rounding_at_every_size():
    u = torch.tensor([0.0, 1e-30, -1e-7, 1e-3, 0.5, -1.0, 3.0, -1e3, 1e18, -1e30, 1e38])  # finite below 2^127
    mine, ref = asinh(u), torch.asinh(u.double())
    assert torch.isfinite(mine).all() and torch.equal(torch.sign(mine), torch.sign(u))
    # a few float32 roundings (log1p, hypot, a division, products): 8 ulps of 2^-23 relative
    assert torch.allclose(mine.double(), ref, rtol=8 * 2.0 ** -23, atol=0)


def test_options_start_as_the_published_network_and_add_no_published_keys():
    torch.manual_seed(3)
    plain = build_multiplexer("demo", 40, 2, SIZES).eval()
    torch.manual_seed(3)
    extended = build_multiplexer("demo", 40, 2, dict(SIZES, position_embedding=True, global_context=True)).eval()
    x = torch.eye(4)[torch.randint(0, 4, (3, 40))].transpose(1, 2)
    assert torch.equal(plain(x), extended(x))  # zero at the start, same random start of the shared layers
    extra = set(extended.state_dict()) - set(plain.state_dict())
    assert extra == {"position_embedding", "model_context.weight", "model_context.bias"}
    # the published layout has neither (the demo keys do not reach it)
    beluga = build_multiplexer("beluga", 40, 2, dict(position_embedding=True, global_context=True))
    assert not ({"position_embedding", "model_context.weight"} & set(beluga.state_dict()))


def test_global_context_sees_the_whole_window_and_embedding_each_position():
    torch.manual_seed(0)
    kw = dict(length=60, n_outputs=1, widths=[4, 4], dilations=[1, 1], kernel=3, head_hidden=8)
    local, wide = Multiplexer(**kw).eval(), Multiplexer(**kw, global_context=True).eval()
    wide.load_state_dict(local.state_dict(), strict=False)
    torch.nn.init.normal_(wide.model_context.weight)
    x = torch.eye(4)[torch.randint(0, 4, (1, 60))].transpose(1, 2)
    far = x.clone()
    far[0, :, 0] = torch.roll(far[0, :, 0], 1)  # another base at position 0
    # receptive field of 2 blocks of two kernel-3 convolutions: 9 bp; position 50 is beyond it
    assert torch.equal(local(x)[..., 50], local(far)[..., 50])
    assert not torch.allclose(wide(x)[..., 50], wide(far)[..., 50])
    emb = Multiplexer(**kw, position_embedding=True).eval()
    emb.load_state_dict(local.state_dict(), strict=False)
    with torch.no_grad():
        emb.position_embedding[:, :, 30] = 5.0
    diff = (emb(x) - local(x)).abs().sum(dim=(0, 1, 2))
    assert diff[30] > 0 and diff[:20].sum() == 0 and diff[40:].sum() == 0  # only around position 30


@pytest.mark.parametrize("options", [dict(loss_weight=1.0), dict(loss_weight=0.6, loss_asinh=3.0),
                                     dict(sizes=dict(SIZES, position_embedding=True,
                                                                                  global_context=True)),
                                     dict(sizes=dict(SIZES, head="relu", rank=8, position_embedding=True))])
def test_training_with_each_option_learns(tmp_path, options):
    torch.set_num_threads(1)
    splits = tiny_splits(tmp_path)
    args = dict(preset="demo", sizes=SIZES, lr=3e-3, batch_size=4, steps=40, validate_every=40, patience=0, seed=7,
                amp=False, device="cpu")
    args.update(options)
    outs = [tmp_path / n for n in ("model.pt", "last.pt", "log.csv", "loss.png")]
    facts = train_multiplexer(splits["train"], splits["validation"], *outs, tmp_path / "ck", **args)
    model, info = load_multiplexer(outs[0])
    assert info["sizes"]["position_embedding"] == bool(options.get("sizes", {}).get("position_embedding"))
    if "loss_asinh" in options:
        assert facts["hparams"]["loss_asinh"] == 3.0 and facts["hparams"]["loss_weight"] == 0.6
    elif "loss_weight" in options:
        assert facts["hparams"]["loss_weight"] == 1.0
    elif info["sizes"].get("head") == "relu":
        assert model.position_embedding.abs().sum() > 0 and model.head_weight.shape == (2, 8)
    else:
        assert model.position_embedding.abs().sum() > 0 and model.model_context.weight.abs().sum() > 0
    # against the untrained network: the validation error fell by more than half
    from seqmux.splits import SplitDataset, check_split

    ds = SplitDataset(check_split(splits["validation"])[0])
    x = torch.stack([torch.from_numpy(ds.onehot(i)) for i in range(len(ds))])
    y = np.stack([ds.target(i) for i in range(len(ds))])
    torch.manual_seed(7)
    start = build_multiplexer("demo", 32, 2, args["sizes"], output_scale=model.sizes["output_scale"]).eval()
    with torch.no_grad():
        err_trained = float(((model(x).numpy() - y) ** 2).mean())
        err_start = float(((start(x).numpy() - y) ** 2).mean())
    assert err_trained < 0.5 * err_start


def test_the_weight_reaches_the_training_loop(tmp_path):
    torch.set_num_threads(1)
    splits = tiny_splits(tmp_path)
    args = dict(preset="demo", sizes=SIZES, lr=3e-3, batch_size=4, steps=4, validate_every=4, patience=0, seed=7,
                amp=False, device="cpu")
    states = []
    for weight, k in ((0.0, 0.0), (1.0, 0.0), (1.0, 3.0)):
        d = tmp_path / f"{weight}_{k}"
        train_multiplexer(splits["train"], splits["validation"], d / "m.pt", d / "l.pt", d / "log.csv", d / "p.png",
                          d / "ck", loss_weight=weight, loss_asinh=k, **args)
        states.append(checkpoint.load(d / "l.pt", "multiplexer")[0])
    # the same seed and batches: only the loss differs, and so do the weights it trained
    for a, b in ((0, 1), (1, 2)):
        assert any(not torch.equal(states[a][k], states[b][k]) for k in states[a] if k.endswith("weight"))
