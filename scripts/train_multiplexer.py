from seqmux.logs import run_stage
from seqmux.train import train_multiplexer

inp, out, p = snakemake.input, snakemake.output, snakemake.params
run = snakemake.config["multiplexer"]["train"]  # execution settings: not params, so no rerun when they change
run_stage(snakemake.log[0], train_multiplexer, list(inp.train), list(inp.validation), out.model, out.last, out.log_csv,
          out.loss_plot, run["checkpoint_dir"], preset=p.preset, sizes=dict(p.sizes), mask_reference=p.mask_reference,
          seed=p.seed, device=run["device"], num_workers=run["num_workers"], threads=snakemake.threads, **p.train)
