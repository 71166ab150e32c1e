"""The Snakemake profiles (profiles/local, profiles/slurm) parse and give every job its resources
(dry runs: no cluster needed)."""

import re

import pytest

from conftest import TINY, run_workflow

GPU_RULES = {"compute_targets", "train_multiplexer", "evaluate_multiplexer"}


def dry_run_resources(workdir, profile):
    """{rule: {resource: value}} of a dry run with ``profile``."""
    result = run_workflow(workdir, TINY, "-n", profile=profile)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    resources = {}
    for rule, block in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S):
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources[rule] = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
    return resources


def test_local_profile(tmp_path):
    resources = dry_run_resources(tmp_path, "local")
    assert set(resources) >= GPU_RULES | {"demo_genome", "expand_mutations"}
    for rule, res in resources.items():
        assert (res.get("gpu") == "1") == (rule in GPU_RULES), (rule, res)


@pytest.fixture(scope="module")
def slurm_resources(tmp_path_factory):
    return dry_run_resources(tmp_path_factory.mktemp("slurm_dry_run"), "slurm")


@pytest.mark.parametrize("rule, mem_mb, runtime", [
    ("sample_windows", "4000", "60"), ("compute_targets", "16000", "240"),
    ("train_multiplexer", "32000", "1440"), ("evaluate_multiplexer", "16000", "240")])
def test_slurm_profile_resources(slurm_resources, rule, mem_mb, runtime):
    resources = slurm_resources
    assert resources[rule]["mem_mb"] == mem_mb and resources[rule]["runtime"] == runtime, resources[rule]
    assert (resources[rule].get("gpu") == "1") == (rule in GPU_RULES)
