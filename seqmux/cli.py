"""The ``seqmux`` command: argument parsing only (the work is in seqmux.predict and seqmux.heatmap).

    seqmux predict --chromosome chr11 --position 1000000 --output out/site
    seqmux predict --vcf variants.vcf.gz --exact --model-kind beluga --weights deepsea.beluga.pth
    seqmux score --vcf calls.vcf.gz --strand both --output out/scores
    seqmux plot out/site.tsv.gz --out site.png
"""

import argparse
import sys

EXAMPLES_PREDICT = """examples:
  seqmux predict --chromosome chr1 --position 150000 --output out/site
  seqmux predict --inputs-file positions.tsv --format both --output out/many
  seqmux predict --vcf variants.vcf.gz --exact --weights resources/demo/base_model.pt --output out/vcf
  seqmux predict --chromosome chr11 --position 1000000 --exact --model-kind beluga \\
      --weights deepsea.beluga.pth --genome hg19.fa --output out/beluga
"""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="seqmux", description="Every single-nucleotide substitution effect of a "
                                     "sequence model, from a trained multiplexer or by exact in-silico mutagenesis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("predict", help="substitution effects of positions or VCF variants",
                            description="Predict the effect of every substitution in the window centred on each "
                            "input position, or of each SNV of a VCF, and write them as a table.",
                            epilog=EXAMPLES_PREDICT, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = p.add_argument_group("inputs (any combination)")
    inputs.add_argument("--chromosome", help="chromosome of one position (with --position)")
    inputs.add_argument("--position", type=int, help="1-based position: the centre of the window scored")
    inputs.add_argument("--inputs-file", metavar="FILE",
                        help="chrom<TAB>position lines (1-based window centres; BED intervals use their centre)")
    inputs.add_argument("--vcf", metavar="FILE",
                        help="VCF (plain or .gz): score only its SNVs, tiled as `seqmux score` tiles (nearby SNVs "
                        "share a window, see --stride); REF is checked against the genome and mismatches are "
                        "reported and skipped")
    inputs.add_argument("--genome", default="resources/demo/genome.fa", metavar="FASTA",
                        help="reference FASTA (default: %(default)s, the workflow's demo genome)")

    model = p.add_argument_group("model")
    model.add_argument("--multiplexer", default="results/multiplexer/model.pt", metavar="FILE",
                       help="trained multiplexer (default: %(default)s); used unless --exact")
    model.add_argument("--exact", action="store_true", help="exact ISM of the base model instead of the multiplexer")
    model.add_argument("--model-kind", choices=("demo", "beluga", "custom"), default="demo",
                       help="base model for --exact (default: %(default)s)")
    model.add_argument("--weights", metavar="FILE", help="base model weights: the demo model file (default "
                       "resources/demo/base_model.pt), Beluga's deepsea.beluga.pth, or a custom state dict")
    model.add_argument("--modelpath", metavar="FILE.py", default="", help="custom: Python file defining the model")
    model.add_argument("--modelname", metavar="CLASS", default="",
                       help="custom: class in --modelpath, constructed with no arguments")
    model.add_argument("--names", metavar="FILE", default="", help="output names, one per line (default: the "
                       "multiplexer's; Beluga's 2,002 names; output_names.txt beside demo weights)")
    model.add_argument("--length", type=_positive_int, help="window length L (default: taken from the model)")
    model.add_argument("--diff", action="store_true", help="effects as alt - ref instead of log-fold change")
    model.add_argument("--stride", type=_positive_int, default=150,
                       help="--vcf: tile stride in bp, as `seqmux score` (default: %(default)s)")

    out = p.add_argument_group("output and running")
    out.add_argument("--output", "-o", required=True, metavar="PREFIX",
                     help="writes PREFIX.tsv.gz and/or PREFIX.parquet, PREFIX.json, and PREFIX.skipped.tsv for a VCF")
    out.add_argument("--format", dest="fmt", choices=("tsv", "parquet", "both"), default="tsv",
                     help="table format (default: %(default)s)")
    out.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    out.add_argument("--batch-size", type=_positive_int, default=256,
                     help="mutants per forward pass of exact ISM (default: %(default)s)")
    out.add_argument("--threads", type=_positive_int, help="CPU threads for torch (exact ISM repeats bit for "
                     "bit at a given thread count; another count changes the last float32 bits)")
    out.add_argument("--log", metavar="FILE", help="write the log and progress bar to FILE instead of stderr")

    s = commands.add_parser("score", help="score a VCF and/or every SNV of regions, tiled (as `snakemake score`)",
                            description="Score every allele of a VCF and/or every SNV of BED regions: windows tiled "
                            "along the chromosomes with a stride, each SNV read from the window where it lies most "
                            "centrally; writes variants.parquet, variants.vcf.gz + .tbi, skipped.tsv, maps/ and "
                            "summary.json under --output (docs/scoring.md).")
    s.add_argument("--vcf", default="", metavar="FILE", help="VCF (plain, gzipped or bgzipped)")
    s.add_argument("--regions", default="", metavar="BED", help="BED: every SNV of every base of its intervals")
    s.add_argument("--genome", default="resources/demo/genome.fa", metavar="FASTA",
                   help="reference FASTA (default: %(default)s)")
    s.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    s.add_argument("--engine", choices=("multiplexer", "exact"), default="multiplexer",
                   help="multiplexer (default) or exact ISM of the base model (also indels and MNVs)")
    s.add_argument("--multiplexer", default="results/multiplexer/model.pt", metavar="FILE",
                   help="trained multiplexer (default: %(default)s)")
    s.add_argument("--model-kind", choices=("demo", "beluga", "custom"), default="demo",
                   help="base model (exact engine, accuracy flag)")
    s.add_argument("--weights", metavar="FILE", help="base model weights (default resources/demo/base_model.pt)")
    s.add_argument("--modelpath", metavar="FILE.py", default="", help="custom: Python file defining the model")
    s.add_argument("--modelname", metavar="CLASS", default="", help="custom: class in --modelpath")
    s.add_argument("--names", metavar="FILE", default="", help="output names, one per line")
    s.add_argument("--length", type=_positive_int, help="window length L (default: taken from the model)")
    s.add_argument("--diff", action="store_true", help="effects as alt - ref instead of log-fold change")
    s.add_argument("--strand", choices=("forward", "both"), default="forward",
                   help="both: mean of the forward and reverse-complement windows")
    s.add_argument("--stride", type=_positive_int, default=150, help="tile stride in bp (default: %(default)s)")
    s.add_argument("--max-ref-mismatch", type=float, default=0.1, help="REF mismatch fraction that stops the run")
    s.add_argument("--accuracy-windows", type=int, default=16,
                   help="multiplexer: windows also scored exactly for the accuracy flag (default: %(default)s)")
    s.add_argument("--summary-features", nargs="*", default=[], metavar="NAME",
                   help="outputs max_abs_effect and top_feature look at (default: all)")
    s.add_argument("--seed", type=int, default=1, help="seed of the accuracy sample")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    s.add_argument("--batch-size", type=_positive_int, default=256, help="mutants per fast-ISM chunk")
    s.add_argument("--window-batch", type=_positive_int, default=8, help="windows per multiplexer pass")
    s.add_argument("--threads", type=_positive_int, help="CPU threads for torch")
    s.add_argument("--log", metavar="FILE", help="write the log to FILE instead of stderr")

    q = commands.add_parser("plot", help="heatmap of a saved prediction",
                            description="Draw one window of a saved prediction as a 4 x L heatmap (rows A,G,C,T; "
                            "0 at the reference base) under the reference sequence.")
    q.add_argument("prediction", help="PREFIX.tsv.gz or PREFIX.parquet written by predict (or PREFIX)")
    q.add_argument("--out", required=True, metavar="FILE", help="image to write: .png or .pdf")
    q.add_argument("--profile", metavar="NAME", help="output to draw (default: the one with the strongest effect)")
    q.add_argument("--window", metavar="CHR:POS", help="window (its centre) when the file holds several")
    q.add_argument("--log", metavar="FILE", help="write the log to FILE instead of stderr")
    return parser


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seqmux")
    except PackageNotFoundError:
        return "unknown"


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .logs import run_stage

    if args.command == "predict":
        from .predict import predict

        run_stage(args.log, predict, args.genome, args.output, chromosome=args.chromosome, position=args.position,
                  inputs_file=args.inputs_file, vcf=args.vcf, exact=args.exact, multiplexer=args.multiplexer,
                  model_kind=args.model_kind, weights=args.weights, modelpath=args.modelpath,
                  modelname=args.modelname, names=args.names, length=args.length, diff=args.diff, fmt=args.fmt,
                  device=args.device, batch_size=args.batch_size, threads=args.threads, stride=args.stride)
    elif args.command == "score":
        from .score.command import score_command

        run_stage(args.log, score_command, args.genome, args.output, vcf=args.vcf, regions=args.regions,
                  engine=args.engine, multiplexer=args.multiplexer, model_kind=args.model_kind, weights=args.weights,
                  modelpath=args.modelpath, modelname=args.modelname, names=args.names, length=args.length,
                  diff=args.diff, strand=args.strand, stride=args.stride, device=args.device,
                  batch_size=args.batch_size, window_batch=args.window_batch,
                  max_ref_mismatch=args.max_ref_mismatch, accuracy_windows=args.accuracy_windows,
                  summary_features=args.summary_features, seed=args.seed, threads=args.threads)
    elif args.command == "plot":
        from .heatmap import plot_prediction

        run_stage(args.log, plot_prediction, args.prediction, args.out, profile=args.profile, window=args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
