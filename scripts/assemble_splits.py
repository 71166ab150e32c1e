from seqmux.logs import run_stage
from seqmux.splits import write_splits

inp, out, t = snakemake.input, snakemake.output, snakemake.params.targets
run_stage(snakemake.log[0], write_splits, inp.windows, inp.tokens, list(inp.shards),
          {s: out[s] for s in ("train", "validation", "test")}, snakemake.params.base_model, t["mode"], t["dtype"])
