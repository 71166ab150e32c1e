"""``seqmux score``: the workflow's scoring stage in the foreground, as one shard (plan, score,
gather into one output folder), with the model given on the command line."""

import logging
from pathlib import Path

from ..errors import InputError
from ..runtime import choose_device
from .engine import exact_scorer, multiplexer_scorer
from .gather import gather
from .plan import make_plan
from .shard import write_shard
from .strand import BothStrands

log = logging.getLogger(__name__)


def score_command(genome, output, vcf="", regions="", engine="multiplexer", multiplexer="results/multiplexer/model.pt",
                  model_kind="demo", weights=None, modelpath="", modelname="", names="", length=None, diff=False,
                  strand="forward", stride=150, device="auto", batch_size=256, window_batch=8, max_ref_mismatch=0.1,
                  accuracy_windows=16, summary_features=(), seed=1):
    """Score a VCF and/or regions into ``output`` (the files of ``seqmux.score.gather``, and the
    plan and shard under ``output/work``). Returns the summary."""
    if not vcf and not regions:
        raise InputError("command line", "--vcf", None, "give --vcf and/or --regions")
    mode = "diff" if diff else "logfold"
    dev = choose_device(device, "command line", "--device")
    if weights is None and model_kind == "demo":
        weights = "resources/demo/base_model.pt"
    exact = None
    if engine == "exact" or accuracy_windows:
        if engine == "exact" or Path(weights or "").is_file() or model_kind != "demo":
            exact, base_names, base_length = exact_scorer(model_kind, weights or "", modelpath, modelname, names,
                                                          length, mode, batch_size, dev)
            length = length or base_length
        else:
            log.warning("no base model at %s: no accuracy flag (give --weights)", weights)
            accuracy_windows = 0
    if engine == "exact":
        scorer, out_names, model_file = exact, base_names, weights
        exact = None
    else:
        scorer, out_names, length = multiplexer_scorer(multiplexer, names, length, mode, dev, window_batch)
        model_file = multiplexer
    if strand == "both":
        scorer = BothStrands(scorer)
        exact = BothStrands(exact) if exact is not None else None
    work = Path(output) / "work"
    info = make_plan(genome, work / "plan.parquet", work / "plan.json", vcf or "", regions or "", length, stride,
                     engine, 1, seed, max_ref_mismatch, accuracy_windows)
    write_shard(genome, work / "plan.parquet", info, work / "0000.parquet", work / "0000.json", 0, scorer, out_names,
                exact, summary_features, window_batch, batch_size, (model_file, "--engine", engine), mode)
    return gather(genome, work / "plan.parquet", work / "plan.json", [work / "0000.parquet"], [work / "0000.json"],
                  output, engine, strand, model_file, mode)
