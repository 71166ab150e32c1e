"""The configuration page (``docs/configuration.md``), generated from the schema, so that the two
cannot drift (a test compares the committed page with this output):

    python -m seqmux.config_docs [--schema schemas/config.schema.yaml] > docs/configuration.md
"""

import argparse
import json
import sys

from .config import SCHEMA, load_yaml, schema_keys

INTRO = """\
# Configuration

Every key of the workflow's configuration, its default and what it does. This page is generated
from `schemas/config.schema.yaml`, the only source of defaults; do not edit it by hand:

```bash
PYTHONPATH=. .venv/bin/python -m seqmux.config_docs > docs/configuration.md
```

`config/config.yaml` holds the keys a user is meant to edit, each at its default; any key may be
set there, in a file given with `--configfile my.yaml` (merged key by key over it), or on the
command line (`--config seed=2`). Keys given nowhere take the defaults below, filled in when the
workflow starts (`snakemake.utils.validate`), and a value the schema rejects stops the run before
any job with one line naming the key. *Execution setting* in a description marks a key that
changes how a job runs but not what it writes, so changing it reruns nothing
([reruns and kills](reruns.md)).
"""


def _json(value):
    return json.dumps(value, ensure_ascii=False)


def _allowed(sub):
    """What values a key takes, in words, from its schema."""
    if "enum" in sub:
        return "one of " + ", ".join(f"`{v}`" for v in sub["enum"])
    kind = sub.get("type", "")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = []
    for word, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if word in sub:
            bounds.append(f"{sign} {sub[word]}")
    if "pattern" in sub:
        bounds.append(f"matching `{sub['pattern']}`")
    if kind == "array" and isinstance(sub.get("items"), dict):
        inner = _allowed(sub["items"])
        counts = [f"{sub[w]} {word}" for w, word in (("minItems", "or more"), ("maxItems", "or fewer")) if w in sub]
        if sub.get("minItems") is not None and sub.get("minItems") == sub.get("maxItems"):
            counts = [f"exactly {sub['minItems']}"]
        return f"list of ({inner})" + (f", {', '.join(counts)}" if counts else "")
    if kind == "object" and isinstance(sub.get("additionalProperties"), dict) and "properties" not in sub:
        return f"map of name to ({_allowed(sub['additionalProperties'])})"
    if kind == "object":
        return "section"
    return " ".join([kind, *bounds]).strip() or "any"


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def render(schema):
    """The Markdown page of ``schema`` (a dict): the introduction, then one table per top-level
    section (top-level scalars first), one row per key, nested keys dotted."""
    out = [INTRO]
    top = schema.get("properties", {})
    groups = [("Top level", [(k, s) for k, s in top.items() if "properties" not in s], schema.get("description"))]
    for name, sub in top.items():
        if "properties" in sub:
            groups.append((f"`{name}`", list(schema_keys(sub, name + ".")), sub.get("description")))
    for title, rows, description in groups:
        out.append(f"## {title}\n")
        if description:
            out.append(_cell(description) + "\n")
        out.append("| key | default | values | description |\n|---|---|---|---|")
        for key, sub in rows:
            default = f"`{_cell(_json(sub['default']))}`" if "default" in sub else ""
            out.append(f"| `{key}` | {default} | {_cell(_allowed(sub))} | {_cell(sub.get('description', ''))} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m seqmux.config_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--schema", default=str(SCHEMA), help="the schema (default: the checkout's)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(load_yaml(args.schema)))


if __name__ == "__main__":
    main()
