import json
from importlib.resources import files

import pytest
import torch

from seqmux.errors import InputError
from seqmux.models import BELUGA, BelugaFamily, build_base_model, load_model, output_names

LAYOUT = json.loads(files("seqmux").joinpath("data/published_layouts.json").read_text())["beluga"]


def test_beluga_has_the_published_layout():
    model = BelugaFamily(**BELUGA)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == LAYOUT["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == LAYOUT["n_parameters"] == 149_536_251


def test_random_published_state_dict_loads_through_the_config(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in LAYOUT["state_dict"].items()}
    path = tmp_path / "deepsea.beluga.pth"
    torch.save(state, path)
    model = build_base_model("beluga", weights=str(path), length=2000)
    assert torch.equal(model.state_dict()["model.1.4.1.weight"], state["model.1.4.1.weight"])
    x = torch.zeros(2, 4, 2000)
    x[:, 0] = 1
    out = model(x)
    assert out.shape == (2, 2002) and torch.all((out > 0) & (out < 1))
    assert len(output_names("beluga", "", 2002)) == 2002
    assert output_names("beluga", "", 2002)[0] == "8988T|DNase"


def test_weights_that_do_not_fit_list_the_keys(tmp_path):
    small = BelugaFamily(length=400, channels=(8, 8, 8), hidden=16, n_outputs=3).state_dict()
    small["extra.weight"] = torch.zeros(1)
    del small["model.0.0.bias"]
    path = tmp_path / "wrong.pth"
    torch.save(small, path)
    with pytest.raises(InputError) as err:
        build_base_model("beluga", weights=str(path), length=2000)
    msg = str(err.value)
    assert "wrong.pth" in msg and "base_model.weights" in msg
    assert "missing keys: model.0.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "mis-shaped keys: model.0.0.weight (8, 4, 1, 8) != (320, 4, 1, 8)" in msg


def test_missing_weights_file(tmp_path):
    with pytest.raises(InputError, match="weights file not found"):
        build_base_model("beluga", weights=str(tmp_path / "none.pth"), length=2000)


CUSTOM = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 5)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return torch.sigmoid(self.head(self.conv(x).amax(-1)))
'''


def test_custom_class_from_a_file(tmp_path):
    module = tmp_path / "mymodel.py"
    module.write_text(CUSTOM)
    model = build_base_model("custom", module=str(module), class_name="Tiny")
    assert model(torch.zeros(1, 4, 50)).shape == (1, 2)
    weights = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), weights)
    again = build_base_model("custom", weights=str(weights), module=str(module), class_name="Tiny")
    assert torch.equal(again.head.weight, model.head.weight)


def test_custom_module_or_class_missing(tmp_path):
    with pytest.raises(InputError, match="base_model.module.*module file not found"):
        build_base_model("custom", module=str(tmp_path / "absent.py"), class_name="Tiny")
    module = tmp_path / "mymodel.py"
    module.write_text(CUSTOM)
    with pytest.raises(InputError) as err:
        build_base_model("custom", module=str(module), class_name="Nope")
    assert err.value.field == "base_model.class" and err.value.value == "Nope"


def test_demo_model_round_trip(demo_dir):
    model = load_model(demo_dir / "model.pt")
    assert model.n_outputs == 6 and model.length == 400
    assert build_base_model("demo", weights=str(demo_dir / "model.pt")).training is False


def test_demo_model_file_is_a_checkpoint_and_wrong_files_are_one_line(demo_dir, tmp_path):
    from seqmux import checkpoint
    from seqmux.multiplexer import build_multiplexer, save_multiplexer

    assert checkpoint.kind_of(demo_dir / "model.pt") == "base_model"
    save_multiplexer(build_multiplexer("demo", 400, 6), tmp_path / "mux.pt", list("abcdef"), "logfold")
    torch.save({"config": {"channels": [4]}, "state_dict": {}}, tmp_path / "old.pt")
    for name, fragment in [("mux.pt", "holds a multiplexer, not a base model"),
                           ("old.pt", "not a seqmux base_model model file"), ("absent.pt", "model file not found")]:
        with pytest.raises(InputError) as err:
            load_model(tmp_path / name)
        assert fragment in str(err.value) and "\n" not in str(err.value) and err.value.field == "base_model.weights"


def test_wrong_number_of_names(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(InputError, match="3 outputs"):
        output_names("custom", str(names), 3)
