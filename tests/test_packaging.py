"""The packaging check of CI (.ci/wheel.sh) fails when the wheel leaves out a module or a data file of
the source tree. CI runs the check itself on the checkout; here it runs on copies whose package
discovery was broken the ways it once was, and must fail naming what is missing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the check lists the checkout's files with git")


def checkout_copy(dest):
    """A git checkout holding this checkout's files (tracked and untracked, not the ignored ones)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


@pytest.mark.parametrize("old, new, missing", [
    # the discovery of before: two packages listed by hand (no seqmux.tracks.scrna)
    ('include = ["seqmux", "seqmux.*"]', 'include = ["seqmux", "seqmux.tracks"]', "seqmux.tracks.scrna.train"),
    # the data of before: the .txt files only (no published_layouts.json)
    ('seqmux = ["data/*"]', 'seqmux = ["data/*.txt"]', "data/published_layouts.json"),
], ids=["subpackage", "data-file"])
def test_wheel_check_fails_when_the_wheel_leaves_something_out(tmp_path, old, new, missing):
    work = checkout_copy(tmp_path / "checkout")
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VENV"] = str(Path(sys.executable).parents[1])
    result = subprocess.run(["bash", str(work / ".ci/wheel.sh"), str(work)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode != 0, result.stdout + result.stderr
    # a left-out subpackage can also break the import of a module that uses it: either error names it
    assert "ERROR: the installed wheel " in result.stderr and "lacks" in result.stderr
    assert missing in result.stderr
