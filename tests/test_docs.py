"""The documentation: the configuration page is the schema's (generated, every key on it), every
schema key is documented somewhere in docs/, and every relative link of README.md and docs/*.md
resolves, anchors included."""

import re
import unicodedata

import pytest

from seqmux.config import SCHEMA, load_yaml, schema_keys
from seqmux.config_docs import render

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REGENERATE = "PYTHONPATH=. .venv/bin/python -m seqmux.config_docs > docs/configuration.md"


def test_configuration_page_is_generated_from_the_schema():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(load_yaml(SCHEMA)), f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_every_schema_key_is_documented_in_docs():
    text = "\n".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    missing = [key for key, _ in schema_keys(load_yaml(SCHEMA)) if f"`{key}`" not in text]
    assert not missing, f"schema keys on no docs/ page: {missing}"


def test_the_configuration_page_has_a_row_for_each_key_with_its_default():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "default": {}, "description": "Section a.", "properties": {
            "b": {"type": "integer", "minimum": 1, "default": 3, "description": "B | of a."},
            "m": {"type": "object", "default": {}, "additionalProperties": {
                "type": "object", "properties": {"x": {"type": "string", "enum": ["u", "v"]}}}}}},
        "seed": {"type": "integer", "default": 1}}}
    page = render(schema)
    assert "| `seed` | `1` | integer |  |" in page
    assert "## `a`\n\nSection a." in page
    assert "| `a.b` | `3` | integer >= 1 | B \\| of a. |" in page
    assert "| `a.m.<name>.x` |  | one of `u`, `v` |  |" in page


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def relative_links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # not http:, https:, mailto:
            yield target


def test_slug_and_anchors():
    assert slug("Evaluation and `metrics.json`") == "evaluation-and-metricsjson"
    assert slug("Stages (one rule, one script, one package function)") == \
        "stages-one-rule-one-script-one-package-function"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
        elif REPO not in dest.parents and dest != REPO:
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_readme_is_an_overview():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail to docs/"
    links = set(relative_links(REPO / "README.md"))
    for page in (REPO / "docs").glob("*.md"):
        assert any(t.split("#")[0] == f"docs/{page.name}" for t in links), f"README.md does not link docs/{page.name}"


def test_no_residue_of_how_the_project_was_built():
    """No tracked file names a work item or a working session by number, or reads or cites a folder
    outside the repository (the pattern is assembled so that this file does not match itself)."""
    import subprocess

    pattern = "|".join(["iss" + "ue [0-9]", "sess" + "ion [0-9]", r"\.\./sha" + "red"])
    found = subprocess.run(["git", "grep", "-nE", pattern], cwd=REPO, capture_output=True, text=True)
    if found.returncode == 128:
        pytest.skip("not a git checkout")
    assert found.stdout == "", found.stdout[:2000]
