# Config validation and the paths shared by the rules. The schema is the only source of defaults;
# validate() fills every key that config/config.yaml and --configfile/--config leave out.

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from seqmux.config import config_error
from seqmux.errors import InputError

try:
    validate(config, schema="../schemas/config.schema.yaml", set_default=True)
except WorkflowError:
    schema_file = os.path.join(workflow.basedir, "schemas/config.schema.yaml")
    raise WorkflowError(
        config_error(
            config,
            schema_file,
            "config (" + ", ".join(map(str, workflow.overwrite_configfiles or ["config/config.yaml"])) + ")",
        )
    ) from None


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
SHARDS = [f"{i:04d}" for i in range(config["targets"]["shards"])]

# Execution settings: keys that change how a job runs but not what it writes (up to the last bits
# of floating point where noted in the schema). Rules never pass them as params (Snakemake reruns a
# job whose params changed); scripts read them from snakemake.config, threads come from `threads:`.
EXECUTION_SETTINGS = {
    "targets": ("device", "batch_size", "threads"),
    "multiplexer.train": ("device", "num_workers", "threads", "checkpoint_dir"),
    "multiplexer.evaluate": ("device", "batch_size", "threads"),
    # each track: its device (read by the track's scripts from snakemake.config)
    **{track: ("device",) for track in ("circuitsnp", "scrna", "gc_hmm", "sgrna")},
}


def meaningful(section, name):
    """The keys of config ``section`` (a dict) that change outputs: all but ``EXECUTION_SETTINGS[name]``."""
    return {k: v for k, v in section.items() if k not in EXECUTION_SETTINGS.get(name, ())}


wildcard_constraints:
    shard=r"\d{4}",
    split="|".join(SPLITS),


DEMO = not config["genome"]["fasta"]


def genome_fasta():
    """The FASTA of the run: the user's, or the embedded demo genome."""
    return rules.demo_genome.output.fasta if DEMO else config["genome"]["fasta"]


def base_model_spec():
    """The base_model config section with the demo's files filled in."""
    spec = {k: config["base_model"][k] for k in ("kind", "weights", "module", "class", "names", "output")}
    if spec["kind"] == "demo":
        spec["weights"] = str(rules.demo_base_model.output.model)
        spec["names"] = spec["names"] or str(rules.demo_base_model.output.names)
    return spec


def base_model_files():
    """Files the target rule depends on (so a new model reruns it)."""
    spec = base_model_spec()
    return [p for p in (spec["weights"], spec["module"], spec["names"]) if p]


def split_files(split):
    """The shards of ``split`` (train, validation or test), each written by a compute_targets job."""
    return expand("results/splits/{split}/{shard}.feather", split=split, shard=SHARDS)


def log_path(rule, wildcards=""):
    return f"logs/{rule}{wildcards}.log"


def benchmark_path(rule, wildcards=""):
    return f"results/benchmarks/{rule}{wildcards}.tsv"


# --- tracks (docs/tracks.md) -----------------------------------------------------------------------
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


# --- checks before any job: what the config and the input files' headers decide -------------------
def check_spine():
    """Windows against the chromosomes (held-out sets, a chromosome per split, training windows,
    the regions file), the window length against the base model (docs/errors.md)."""
    from seqmux.genome import chromosome_lengths, open_fasta
    from seqmux.models import check_model_length
    from seqmux.windows import check_windows

    w = config["windows"]
    check_model_length(config["base_model"]["kind"], w["length"])
    if DEMO:
        lengths, source = dict(config["genome"]["demo"]["chromosomes"]), "genome.demo.chromosomes"
    else:  # the index checked against the FASTA (rebuilt when stale), so the jobs find a good one
        lengths, source = chromosome_lengths(open_fasta(config["genome"]["fasta"])), config["genome"]["fasta"]
    check_windows(
        lengths,
        w["length"],
        w["count"],
        w["validation_chroms"],
        w["test_chroms"],
        w["chroms"],
        w["regions"],
        source,
        min_train=1,
    )


check_at_start(check_spine)


def explicit_devices():
    """``(field, device)`` of every device setting of the run that names a CUDA device."""
    fields = [
        ("targets", config["targets"]),
        ("multiplexer.train", config["multiplexer"]["train"]),
        ("multiplexer.evaluate", config["multiplexer"]["evaluate"]),
    ]
    fields += [(track, config[track]) for track in config["tracks"]]
    return [(f"{name}.device", s["device"]) for name, s in fields if str(s.get("device", "")).startswith("cuda")]


def n_outputs_planned():
    """F as the config says it (custom models without a names file: known only once built)."""
    b = config["base_model"]
    if b["kind"] == "beluga":
        return 2002
    if b["kind"] == "demo":
        return int(b["demo"]["outputs"])
    if b.get("names"):
        return sum(1 for line in open(b["names"]) if line.strip())
    return None


def disk_line():
    """The disk estimate of the ISM targets (docs/multiplexer.md, "Disk"), or why there is none."""
    from seqmux.splits import disk_summary

    w, f = config["windows"], n_outputs_planned()
    if w["regions"]:
        n = sum(1 for line in open(w["regions"]) if line.strip() and not line.startswith(("#", "track", "browser")))
    else:
        n = sum(w["count"].values())
    if f is None:
        return f"disk for the ISM targets: {n} windows x F x 4 x {w['length']} x (2 or 4) B, twice"
    return disk_summary(n, f, w["length"], config["targets"]["dtype"])


onstart:
    logger.info(disk_line())
    # Jobs run on this machine (not a cluster whose nodes have the GPUs): a CUDA device that is
    # not here stops the run before any job. Not at parse time: the executor is known only now.
    if workflow.local_exec and explicit_devices():
        from seqmux.runtime import choose_device

        for field, device in explicit_devices():
            check_at_start(choose_device, device, "config", field)
