# Config validation (defaults filled from the schema) and the paths every rule shares.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from seqmux.config import config_error
from seqmux.errors import InputError

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError:
    schema_file = os.path.join(workflow.basedir, "schemas/config.schema.yaml")
    raise WorkflowError(config_error(config, schema_file, "config (" + ", ".join(map(str, workflow.overwrite_configfiles or ["config/config.yaml"])) + ")")) from None



def require_file(field, path, needed=False):
    """Fail at start, in one line, when a file the config names is missing."""
    if needed and not path:
        raise WorkflowError(f"config: {field}='': required when base_model.kind={config['base_model']['kind']}")
    if path and not os.path.isfile(path):
        raise WorkflowError(f"config: {field}={path!r}: file not found")


require_file("genome.fasta", config["genome"]["fasta"])
require_file("windows.regions", config["windows"]["regions"])
require_file("base_model.weights", config["base_model"]["weights"], config["base_model"]["kind"] == "beluga")
require_file("base_model.module", config["base_model"]["module"], config["base_model"]["kind"] == "custom")
require_file("base_model.names", config["base_model"]["names"])
if config["base_model"]["kind"] == "custom" and not config["base_model"]["class"]:
    raise WorkflowError("config: base_model.class='': required when base_model.kind=custom")

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


# --- tracks (../shared/design.md, "Tracks") -------------------------------------------------------
# Each rules/<track>.smk sets TRACK_FILES["<track>"] to its final files and defines a target rule
# named <track>; `rule all` builds those of the tracks listed in config["tracks"].
TRACK_FILES = {}


def track_gpu(section):
    """The ``gpu`` resource of a track rule: 0 when the section's device is ``cpu``, else 1."""
    return 0 if config[section]["device"] == "cpu" else 1


def check_at_start(check, *args, **kwargs):
    """Run a track's config check when the workflow starts: its InputError stops the run before any
    job, as one line."""
    try:
        return check(*args, **kwargs)
    except InputError as err:
        raise WorkflowError(str(err)) from None
