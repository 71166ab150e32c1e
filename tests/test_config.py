"""The schema is the only source of defaults: config/config.yaml repeats some of them for users to
edit and must agree with it; ``seqmux.config.with_defaults`` fills a config as the workflow does."""

import copy

import jsonschema
import pytest
import yaml
from snakemake.utils import validate

from seqmux.config import CONFIG, SCHEMA, config_error, deep_merge, load_config, load_yaml, schema_keys, with_defaults

from conftest import REPO

TRACKS = ("circuitsnp", "scrna", "gc_hmm", "sgrna")


def disagreements(schema, value, key=""):
    """Where ``value`` (a config, or part of one) differs from the schema's defaults: a section is
    compared key by key, anything else (a number, a list, a map of free names) with its default."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in value.items():
            if name not in schema["properties"]:
                yield f"{key}{name}: not a key of the schema"
            else:
                yield from disagreements(schema["properties"][name], sub, f"{key}{name}.")
    elif "default" not in schema:
        yield f"{key[:-1]}: {value!r} in config/config.yaml, no default in the schema"
    elif value != schema["default"]:
        yield f"{key[:-1]}: {value!r} in config/config.yaml, {schema['default']!r} in the schema"


def test_every_key_of_config_yaml_is_at_its_schema_default():
    wrong = list(disagreements(load_yaml(SCHEMA), load_yaml(CONFIG)))
    assert not wrong, "config/config.yaml disagrees with the schema's defaults:\n" + "\n".join(wrong)
    # and the check sees a disagreement
    assert list(disagreements(load_yaml(SCHEMA), {"targets": {"dtype": "float16"}})) == [
        "targets.dtype: 'float16' in config/config.yaml, 'float32' in the schema"]


def test_config_yaml_adds_nothing_to_the_schema_defaults():
    """The config the workflow sees is the same with and without config/config.yaml."""
    assert with_defaults(load_yaml(CONFIG)) == with_defaults({})


def test_every_key_has_a_default_and_the_spine_a_description():
    """A key left out of every config file gets its value from the schema, so each needs a default
    (keys inside a free-name map, such as a GC-HMM preset's states, are given with their map)."""
    missing, undocumented = [], []
    for key, sub in schema_keys(load_yaml(SCHEMA)):
        if "<name>" in key:
            continue
        if "default" not in sub:
            missing.append(key)
        if key.split(".")[0] not in TRACKS and not sub.get("description"):
            undocumented.append(key)
    assert not missing, f"schema keys without a default: {missing}"
    assert not undocumented, f"schema keys without a description: {undocumented}"


def test_with_defaults_fills_nested_sections_as_snakemake_does():
    given = {"seed": 7, "windows": {"count": {"train": 5}}, "multiplexer": {"train": {"steps": 3}}, "tracks": []}
    ours = with_defaults(given)
    assert given == {"seed": 7, "windows": {"count": {"train": 5}}, "multiplexer": {"train": {"steps": 3}},
                     "tracks": []}, "the argument is left as it was"
    assert ours["windows"]["count"] == {"train": 5, "validation": 100, "test": 100}
    assert ours["multiplexer"]["train"]["steps"] == 3 and ours["multiplexer"]["train"]["lr"] == 0.008
    assert ours["targets"]["dtype"] == "float32" and ours["genome"]["demo"]["motifs"] == 12
    theirs = copy.deepcopy(given)
    validate(theirs, str(SCHEMA), set_default=True)  # what rules/common.smk runs
    assert ours == theirs


def test_with_defaults_rejects_what_the_schema_rejects():
    with pytest.raises(jsonschema.ValidationError):
        with_defaults({"targets": {"dtype": "float8"}})
    assert config_error({"targets": {"dtype": "float8"}}, SCHEMA).startswith("config: targets.dtype='float8': ")
    assert config_error({}, SCHEMA) is None


def test_load_config_layers_files_over_config_yaml(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"windows": {"length": 2000}, "targets": {"dtype": "float16"}}))
    cfg = load_config(extra)
    assert cfg["windows"]["length"] == 2000 and cfg["windows"]["count"]["train"] == 2000
    assert cfg["targets"] == {**with_defaults({})["targets"], "dtype": "float16"}
    hg19 = load_config(REPO / "config/hg19_beluga.yaml")
    assert hg19["base_model"]["kind"] == "beluga" and hg19["targets"]["dtype"] == "float16"
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
