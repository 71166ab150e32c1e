from seqmux.logs import run_stage
from seqmux.train import train_multiplexer

inp, out, p = snakemake.input, snakemake.output, snakemake.params
t = {k: v for k, v in p.train.items() if k not in ("checkpoint_dir", "threads")}
run_stage(snakemake.log[0], train_multiplexer, inp.train, inp.validation, out.model, out.last, out.log_csv,
          out.loss_plot, p.checkpoint_dir, preset=p.preset, sizes=dict(p.sizes), mask_reference=p.mask_reference,
          seed=p.seed, threads=snakemake.threads, **t)
