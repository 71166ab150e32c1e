"""The configuration's schema: the only source of defaults, its keys, and config checks shared by the
workflow and the command-line tool.

The workflow fills defaults with Snakemake's ``validate`` (``rules/common.smk``); code outside the
workflow (benchmarks, tests) fills them the same way with ``with_defaults``.
"""

import copy
from pathlib import Path

import jsonschema
import yaml

# in a checkout; the installed package has no schema, so callers outside one pass their own path
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
CONFIG = SCHEMA.parents[1] / "config" / "config.yaml"


def load_yaml(path):
    with open(path) as fh:
        return yaml.safe_load(fh)


def config_error(config, schema_path, source="config"):
    """One line naming the first field of ``config`` that breaks the schema, or None."""
    schema = load_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    value = error.instance if not isinstance(error.instance, dict) else "{...}"
    return f"{source}: {field}={value!r}: {error.message}"


def _filling_validator():
    """Draft 2020-12 validation that first sets every missing property that has a ``default`` (as
    Snakemake's ``validate(..., set_default=True)`` does), then validates the filled value."""
    base = jsonschema.Draft202012Validator
    properties = base.VALIDATORS["properties"]

    def fill(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": fill})


def with_defaults(config, schema_path=SCHEMA):
    """A copy of ``config`` (a dict) with every missing key set to its schema default, as the
    workflow sees it. Raises ``jsonschema.ValidationError`` when the result breaks the schema."""
    out = copy.deepcopy(config)
    _filling_validator()(load_yaml(schema_path)).validate(out)
    return out


def load_config(*files, schema_path=SCHEMA):
    """The config the workflow runs with: ``config/config.yaml``, then each of ``files`` merged over
    it key by key (as ``--configfile``), then the schema's defaults."""
    merged = {}
    for path in (CONFIG, *files):
        merged = deep_merge(merged, load_yaml(path) or {})
    return with_defaults(merged, schema_path)


def deep_merge(base, extra):
    """``extra`` merged over ``base``, nested dicts key by key (Snakemake's rule for config files)."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def schema_keys(schema, prefix=""):
    """``(dotted key, subschema)`` of every key the schema describes, parents before children.
    A map with free names (``additionalProperties`` holding an object schema) adds ``<name>``."""
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        yield key, sub
        yield from schema_keys(sub, key + ".")
    free = schema.get("additionalProperties")
    if isinstance(free, dict) and ("properties" in free or "additionalProperties" in free):
        key = f"{prefix}<name>"
        yield key, free
        yield from schema_keys(free, key + ".")
