# Config validation (defaults filled from the schema) and the paths every rule shares.

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

SPLITS = ["train", "validation", "test"]
SPLIT_FILES = expand("results/splits/{split}.feather", split=SPLITS)
SHARDS = [f"{i:04d}" for i in range(config["targets"]["shards"])]
DEMO = not config["genome"]["fasta"]


def genome_fasta():
    """The FASTA of the run: the user's, or the embedded demo genome."""
    return "resources/demo/genome.fa" if DEMO else config["genome"]["fasta"]


def base_model_spec():
    """The base_model config section with the demo's files filled in."""
    spec = {k: config["base_model"][k] for k in ("kind", "weights", "module", "class", "names")}
    if spec["kind"] == "demo":
        spec["weights"] = "resources/demo/base_model.pt"
        spec["names"] = spec["names"] or "resources/demo/output_names.txt"
    return spec


def base_model_files():
    """Files the target rule depends on (so a new model reruns it)."""
    spec = base_model_spec()
    return [p for p in (spec["weights"], spec["module"], spec["names"]) if p]


def log_path(rule, wildcards=""):
    return f"logs/{rule}{wildcards}.log"


def benchmark_path(rule, wildcards=""):
    return f"results/benchmarks/{rule}{wildcards}.tsv"
