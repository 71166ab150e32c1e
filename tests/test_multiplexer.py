import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmux.errors import InputError
from seqmux.models import BelugaFamily, save_model
from seqmux.multiplexer import (Multiplexer, beluga_multiplexer, build_multiplexer, load_multiplexer, n_parameters,
                                positional_ramp, save_multiplexer)

PUBLISHED = json.loads(files("seqmux").joinpath("data/published_layouts.json").read_text())["beluga_multiplexer"]


def test_beluga_preset_has_the_published_layout():
    with torch.device("meta"):
        model = beluga_multiplexer()
    state = model.state_dict()
    assert list(state) == list(PUBLISHED["state_dict"])
    assert {k: list(v.shape) for k, v in state.items()} == PUBLISHED["state_dict"]
    assert n_parameters(model) == PUBLISHED["n_parameters"] == 202_273_376
    # a state dict with exactly the published keys and shapes loads (meta tensors: no memory)
    published = {k: torch.empty(shape, device="meta") for k, shape in PUBLISHED["state_dict"].items()}
    model.load_state_dict(published, strict=True, assign=True)


def test_ramp_matches_the_published_one_at_2000():
    ramp = positional_ramp(2000).double().numpy()
    expected = np.concatenate([np.arange(1000) * 0.001, 1 - np.arange(1000) * 0.001])
    assert np.allclose(ramp, expected, atol=1e-6)
    lin = positional_ramp(5, "linear").numpy()
    assert np.allclose(lin, [0, 0.25, 0.5, 0.75, 1])


def test_output_layout_and_reference_mask():
    torch.manual_seed(0)
    length, n_out = 24, 3
    model = Multiplexer(length, n_out, widths=[4, 4], dilations=[1, 2], mask_reference=False).eval()
    head = model.model_final[3]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(4 * n_out, dtype=torch.float32))
    x = torch.zeros(2, 4, length)
    x[:, 1] = 1  # all G
    y = model(x)
    assert y.shape == (2, n_out, 4, length)
    # head channel 4 f + a is output f, base a, at every position
    expected = torch.arange(4 * n_out, dtype=torch.float32).view(n_out, 4, 1).expand(n_out, 4, length)
    assert torch.equal(y[0], expected)
    model.sizes["mask_reference"] = True
    y = model(x)
    assert torch.all(y[:, :, 1] == 0) and torch.equal(y[0, :, 0], expected[:, 0])


def test_length_is_kept_for_even_kernels_and_dilations():
    model = build_multiplexer("demo", 37, 2, dict(widths=[4, 6, 6], dilations=[1, 3, 4], kernel=8)).eval()
    assert model(torch.rand(1, 4, 37)).shape == (1, 2, 4, 37)
    assert model.residual == [False, False, True]


@pytest.mark.parametrize("extras", [{}, dict(position_embedding=True, global_context=True),
                                    dict(head="bilinear", rank=3), dict(head="relu", rank=3, position_embedding=True),
                                    dict(head="difference", trunk="unet", pool=2),
                                    dict(trunk="unet", pool=4), dict(trunk="unet", pool=2, head="relu", rank=3)])
def test_positions_give_the_columns_of_the_full_output(extras):
    torch.manual_seed(1)
    model = Multiplexer(30, 3, widths=[5, 5], dilations=[1, 2], head_hidden=7, output_scale=0.5, **extras).eval()
    for p in model.parameters():  # the zero-initialised extras too, so that they matter
        torch.nn.init.normal_(p, std=0.3)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 30)), 4).transpose(1, 2).float()
    with torch.no_grad():
        full = model(x)
        per_window = model(x, positions=torch.tensor([[0, 29, 7], [3, 3, 12]]))
        shared = model(x, positions=[5, 6])
    assert per_window.shape == (2, 3, 4, 3) and shared.shape == (2, 3, 4, 2)
    assert torch.allclose(per_window[0], full[0][:, :, [0, 29, 7]], atol=1e-6)
    assert torch.allclose(per_window[1], full[1][:, :, [3, 3, 12]], atol=1e-6)
    assert torch.allclose(shared, full[:, :, :, 5:7], atol=1e-6)
    assert torch.all(per_window[0, :, :, 0][:, x[0, :, 0].bool()] == 0)  # the reference base masked


@pytest.mark.parametrize("head", ["bilinear", "relu"])
def test_factored_heads_compute_their_formula(head):
    """``bilinear``: ``sum_k G[f, k] (v[k, alt] - v[k, ref])`` with the window's gate ``G``;
    ``relu``: ``sum_k W[f, k] (relu(h_k + v[k, alt] - v[k, ref]) - relu(h_k))``; the reference base
    gives exactly 0 without the mask; an N position (no reference base) gives the effect of ``v[alt]``."""
    torch.manual_seed(2)
    length, n_out, k = 20, 3, 5
    model = Multiplexer(length, n_out, widths=[6, 6], dilations=[1, 2], head=head, rank=k, mask_reference=False,
                        output_scale=2.0).eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, length)), 4).transpose(1, 2).float()
    x[1, :, 4] = 0  # an N
    with torch.no_grad():
        y = model(x)
        h = model.trunk(x)
        v = model.head_local(h).view(2, k, 4, length)
        window = model.head_window(torch.cat([h.mean(2), h.amax(2)], 1))
    d = v - (v * x[:, None]).sum(2, keepdim=True)
    if head == "bilinear":
        expected = torch.einsum("bfk,bkap->bfap", window.view(2, n_out, k), d)
    else:
        hid = window[:, :, None, None]
        expected = torch.einsum("fk,bkap->bfap", model.head_weight, torch.relu(hid + d) - torch.relu(hid))
    assert y.shape == (2, n_out, 4, length)
    assert torch.allclose(y, 2.0 * expected, atol=1e-5)
    assert torch.all(y.permute(0, 1, 3, 2)[x.transpose(1, 2)[:, None].expand(-1, n_out, -1, -1).bool()] == 0)
    assert torch.all(y[1, :, :, 4] != 0)
    assert model.config()["head"] == head and model.config()["rank"] == k
    with pytest.raises(ValueError, match="unknown head"):
        Multiplexer(length, n_out, widths=[6], head="dense")


def test_difference_head_is_the_conv_head_minus_its_reference_value():
    """``difference``: the published head's layers (the same ``state_dict``) give 4 values ``v`` a
    base, the effect is ``v[alt] - v[ref]``: 0 at the reference base without the mask, the three
    substitutions of a base differ from the ``conv`` head's by one shared amount, an N position (no
    reference base) keeps ``v``; the config names it and rebuilds it."""
    torch.manual_seed(3)
    length, n_out = 24, 3
    conv = Multiplexer(length, n_out, widths=[6, 6], dilations=[1, 2], mask_reference=False).eval()
    diff = Multiplexer(length, n_out, widths=[6, 6], dilations=[1, 2], mask_reference=False, head="difference").eval()
    assert conv.state_dict().keys() == diff.state_dict().keys()
    diff.load_state_dict(conv.state_dict())
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, length)), 4).transpose(1, 2).float()
    x[1, :, 5] = 0  # an N
    with torch.no_grad():
        v, y = conv(x), diff(x)
    ref = x.argmax(1)  # [B, L]
    for b, p in [(0, 0), (0, 11), (1, 23)]:
        r = int(ref[b, p])
        assert torch.allclose(y[b, :, :, p], v[b, :, :, p] - v[b, :, r:r + 1, p], atol=1e-6)
        assert torch.all(y[b, :, r, p] == 0)
    assert torch.equal(y[1, :, :, 5], v[1, :, :, 5])
    assert diff.config()["head"] == "difference" and "rank" not in diff.config()
    assert Multiplexer(**diff.config()).sizes == diff.sizes


def test_unet_trunk_keeps_any_length_and_sees_the_whole_window():
    """``trunk: unet``: levels at resolution 1, pool, pool^2, ... (max-pools, ceil mode) and back up
    (nearest upsampling cut to the skip's length, concatenated, one convolution a level): the output
    keeps ``L`` for lengths that no power of the pool divides; a substitution at one end changes the
    features at the other through the coarse levels (4 levels of pool 4, kernel 3: beyond the
    reach of the full-resolution convolutions alone); it has the published trunk's blocks plus one
    decoder convolution a level, its config names it and rebuilds it."""
    torch.manual_seed(3)
    for length in (37, 64, 101):
        model = build_multiplexer("demo", length, 2, dict(trunk="unet", widths=[16, 6, 6, 6], dilations=[1, 1, 1, 1],
                                                          kernel=3, pool=4)).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
        x = torch.nn.functional.one_hot(torch.randint(0, 4, (1, length)), 4).transpose(1, 2).float()
        with torch.no_grad():
            h, y = model.trunk(x), model(x)
            far = x.clone()
            far[0, :, -1] = far[0, :, -1].roll(1)  # another base at the last position
            h_far = model.trunk(far)
        assert h.shape == (1, 16, length) and y.shape == (1, 2, 4, length)
        assert h[..., :3].abs().sum() > 0 and not torch.allclose(h[..., :3], h_far[..., :3])  # the first see the last
    assert [n for n in model.state_dict() if n.startswith("model_up_")][0].startswith("model_up_three.0.")
    assert model.up_names == ["model_up_three", "model_up_two", "model_up_one"]
    rebuilt = Multiplexer(**model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert model.config()["trunk"] == "unet" and model.config()["pool"] == 4
    plain = build_multiplexer("demo", 40, 2, dict(trunk="dilated", widths=[4, 4], dilations=[1, 2]))
    assert "trunk" not in plain.config() and not any(k.startswith("model_up_") for k in plain.state_dict())
    with pytest.raises(ValueError, match="unknown trunk"):
        Multiplexer(40, 2, widths=[4], trunk="transformer")


def test_save_and_load(tmp_path):
    model = build_multiplexer("demo", 40, 2, dict(widths=[4, 4], dilations=[1, 2])).eval()
    path = tmp_path / "model.pt"
    save_multiplexer(model, path, ["a", "b"], "logfold", "demo")
    loaded, info = load_multiplexer(path)
    x = torch.rand(3, 4, 40)
    assert torch.equal(loaded(x), model(x))
    assert info["output_names"] == ["a", "b"] and info["length"] == 40 and info["mode"] == "logfold"
    assert info["preset"] == "demo" and info["sizes"]["widths"] == [4, 4]
    with pytest.raises(InputError, match="model file not found"):
        load_multiplexer(tmp_path / "missing.pt")


def test_output_scale_multiplies_the_prediction_and_is_saved(tmp_path):
    torch.manual_seed(1)
    plain = build_multiplexer("demo", 40, 2, dict(widths=[4, 4], dilations=[1, 2])).eval()
    scaled = build_multiplexer("demo", 40, 2, dict(widths=[4, 4], dilations=[1, 2]), output_scale=0.25).eval()
    scaled.load_state_dict(plain.state_dict())            # no state_dict key for the scale
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 40)), 4).transpose(1, 2).float()
    with torch.no_grad():
        assert torch.allclose(scaled(x), 0.25 * plain(x), rtol=1e-6, atol=1e-8)
    save_multiplexer(scaled, tmp_path / "m.pt", ["a", "b"], "diff", "demo")
    loaded, info = load_multiplexer(tmp_path / "m.pt")
    assert info["sizes"]["output_scale"] == 0.25
    with torch.no_grad():
        assert torch.equal(loaded(x), scaled(x))


def test_target_rms(tmp_path):
    from mux_synthetic import random_sequences, write_split
    from seqmux.splits import open_split, target_rms

    from seqmux.encoding import one_hot, tokenize

    rng = np.random.default_rng(0)
    seqs = random_sequences(5, 12, rng)
    identity = np.stack([one_hot(tokenize(s)) for s in seqs])[:, None].astype(bool)    # [5, 1, 4, 12]
    targets = np.where(identity, 0.0, rng.normal(0, 0.01, (5, 2, 4, 12))).astype(np.float32)
    write_split(tmp_path / "t.feather", seqs, targets, ["a", "b"])
    table = open_split(tmp_path / "t.feather")
    assert target_rms(table) == pytest.approx(float(np.sqrt(np.mean(targets.astype(np.float64) ** 2))), rel=1e-6)
    assert target_rms(table, max_rows=2) == pytest.approx(
        float(np.sqrt(np.mean(targets[[0, 4]].astype(np.float64) ** 2))), rel=1e-6)
    write_split(tmp_path / "z.feather", random_sequences(2, 12, rng), np.zeros((2, 2, 4, 12), np.float32), ["a", "b"])
    assert target_rms(open_split(tmp_path / "z.feather")) == 1.0


def test_model_file_is_a_checkpoint_and_wrong_files_give_one_line(tmp_path):
    """``model.pt`` is a ``seqmux.checkpoint`` (loads with weights_only=True); a file of the previous
    format, a base model's file and another kind's checkpoint each give one InputError line."""
    from seqmux import checkpoint

    model = build_multiplexer("demo", 40, 2, dict(widths=[4, 4], dilations=[1, 2]), seed=3).eval()
    save_multiplexer(model, tmp_path / "m.pt", ["a", "b"], "logfold", "demo", extra=dict(train=dict(steps_done=5)))
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["kind"] == "multiplexer" and blob["meta"]["train"] == {"steps_done": 5}
    assert load_multiplexer(tmp_path / "m.pt")[1]["meta"]["train"]["steps_done"] == 5
    torch.save(dict(config=model.config(), state_dict=model.state_dict()), tmp_path / "old.pt")
    torch.save(dict(config=dict(channels=[4]), state_dict={}), tmp_path / "base.pt")
    checkpoint.save(tmp_path / "other.pt", "sgrna", model)
    save_model(BelugaFamily(length=400, channels=(4, 4, 4), hidden=4, n_outputs=2), tmp_path / "base_now.pt")
    (tmp_path / "text.pt").write_text("not a model\n")
    for name, fragment in [("old.pt", "previous file format: rerun the train stage"),
                           ("base.pt", "it holds a base model: give it to --exact --weights"),
                           ("base_now.pt", "it holds a base model: give it to --exact --weights"),
                           ("other.pt", "holds a 'sgrna' model, not a 'multiplexer' model"),
                           ("text.pt", "not a PyTorch model file")]:
        with pytest.raises(InputError) as err:
            load_multiplexer(tmp_path / name)
        assert fragment in str(err.value) and "\n" not in str(err.value), name


def test_seeded_start_comes_from_the_seeding_stream():
    """``seed``: the same start for the same seed, another for another seed, torch's global RNG
    untouched."""
    sizes = dict(widths=[4, 4], dilations=[1, 2])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b = (build_multiplexer("demo", 40, 2, sizes, seed=5).state_dict() for _ in range(2))
    c = build_multiplexer("demo", 40, 2, sizes, seed=6).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_every_demo_key_of_the_config_reaches_the_network():
    """Each key of ``multiplexer.demo`` in the schema changes the demo network (none is dropped)."""
    import yaml

    from seqmux.multiplexer import preset_sizes

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml").read_text())
    keys = schema["properties"]["multiplexer"]["properties"]["demo"]["properties"]
    assert set(keys) <= set(preset_sizes("demo")), set(keys) - set(preset_sizes("demo"))
    model = build_multiplexer("demo", 40, 2, dict(widths=[4], dilations=[1], ramp="linear"))
    assert model.sizes["ramp"] == "linear" and torch.equal(model.ramp, positional_ramp(40, "linear"))
    model = build_multiplexer("demo", 40, 2, dict(widths=[4], dilations=[1], head="relu", rank=3))
    assert model.head_local.out_channels == 12 and model.head_weight.shape == (2, 3)
