"""Scoring benchmark, in one process on a trained run of the embedded default (a workflow folder):

1. accuracy by distance from the window centre: on the test split, the Multiplexer's effects
   against exact ISM (the split's targets), weighted per-profile Pearson (seqmux.metrics) in bins of
   |position - centre|; the largest stride whose edge bin (distance stride/2) stays within
   ``--margin`` of the centre bin's figure;
2. variants a second for a dense VCF (a variant every 20 bp over 100 kb), a sparse one (every
   20 kb) and every SNV of a 100 kb region, for (a) the Multiplexer with tiling, (b) the Multiplexer
   with one window per variant, (c) fast exact ISM with tiling, (d) a ref/alt baseline (two forward
   passes of the base model per variant, batched, as Selene and kipoi-veff do);
3. the per-window costs behind those rates (a Multiplexer window with the head on a tile's columns,
   a base-model pass in a batch), in seconds and in multiply-adds, at the embedded default's shapes
   and (``--beluga``) at Beluga's, and the bounds they put on (a)/(b) and (a)/(d) on a dense VCF.

    PYTHONPATH=. python benchmarks/score.py RUN_DIR [--margin 0.02] [--threads 2] [--beluga]

Prints tables; results of a run are in benchmarks/score_cpu_results.txt.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def accuracy_by_distance(run, bins):
    from seqmux.metrics import PearsonAccumulator
    from seqmux.multiplexer import load_multiplexer
    from seqmux.splits import SplitDataset, open_split

    model, info = load_multiplexer(run / "results/multiplexer/model.pt")
    ds = SplitDataset(open_split(run / "results/splits/test"))
    length = info["length"]
    centre = (length - 1) // 2
    distance = np.abs(np.arange(length) - centre)
    accs = [PearsonAccumulator(info["n_outputs"]) for _ in bins[:-1]]
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            x, exact = item[0], item[1]
            pred = model(torch.as_tensor(x)[None])[0].numpy()
            exact = np.asarray(exact)
            for k, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
                cols = (distance >= lo) & (distance < hi)
                e = exact[:, :, cols].reshape(exact.shape[0], -1)
                accs[k].update(pred[:, :, cols].reshape(e.shape), e, np.abs(e))
    return [float(a.result().mean()) for a in accs]


CAP = 1000  # variants timed for the per-variant methods (b) and (d), whose cost per variant is constant
TILE_CAP = 40  # tiles timed for the tiled methods (a) and (c), whose cost per tile is constant for an input


def timed(fn):
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start)


def speeds(run, threads):
    from seqmux.genome import chromosome_lengths, open_fasta
    from seqmux.models import load_model
    from seqmux.multiplexer import load_multiplexer
    from seqmux.score.engine import ExactScorer, MultiplexerScorer
    from seqmux.encoding import tokenize
    from seqmux.score.plan import tile_start
    from seqmux.windows import padded_sequence

    torch.set_num_threads(threads)
    fasta = open_fasta(run / "resources/demo/genome.fa")
    lengths = chromosome_lengths(fasta)
    mux_model, info = load_multiplexer(run / "results/multiplexer/model.pt")
    length = info["length"]
    base = load_model(run / "resources/demo/base_model.pt").eval()
    mux = MultiplexerScorer(mux_model, "cpu", 8)
    exact = ExactScorer(base, info["mode"], 512, "cpu")
    chrom = "chr1"
    n = lengths[chrom]
    lo, span = min(50_000, n // 4), min(100_000, n // 2)  # the default's 300 kb chromosomes: 50 kb .. 150 kb

    def window(start):
        return tokenize(padded_sequence(fasta, chrom, start, start + length, n)[0])

    def ref_base(p0):
        return int(tokenize(fasta[chrom][p0]).item())

    def snvs(positions):
        return [(p0, (ref_base(p0) + 1) % 4) for p0 in positions if ref_base(p0) < 4]

    inputs = {"dense (1 per 20 bp, 100 kb)": snvs(range(lo, lo + span, 20)),
              "sparse (1 per 20 kb)": snvs(range(lo, n - lo, 20_000)),
              "region (all SNVs, 100 kb)": [(p0, a) for p0 in range(lo, lo + span) for a in range(4)
                                            if a != ref_base(p0) and ref_base(p0) < 4]}

    def tiled(scorer, variants, stride):
        tiles = {}
        for p0, a in variants:
            tiles.setdefault(int(tile_start(p0, length, stride)), []).append((p0, a))
        tiles = dict(list(tiles.items())[:TILE_CAP])  # the first tiles: a sample gives the rate
        items = [(window(s), np.array([p - s for p, _ in v]), np.array([a for _, a in v])) for s, v in tiles.items()]
        scorer.windows(items)
        return sum(len(v) for v in tiles.values())

    def per_variant(scorer, variants):
        variants = variants[:CAP]  # a constant cost per variant: a sample gives the rate
        lower = (length - 1) // 2
        items = [(window(p0 - lower), np.array([lower]), np.array([a])) for p0, a in variants]
        for i in range(0, len(items), 8):
            scorer.windows(items[i:i + 8])
        return len(variants)

    def ref_alt(variants, batch=64):
        variants = variants[:CAP]
        lower = (length - 1) // 2
        with torch.no_grad():
            for i in range(0, len(variants), batch):
                chunk = variants[i:i + batch]
                refs = np.stack([window(p0 - lower) for p0, _ in chunk])
                alts = refs.copy()
                alts[:, lower] = [a for _, a in chunk]
                exact.pairs(refs, alts)
        return len(variants)

    return inputs, {"(a) multiplexer, tiled": lambda v, s: tiled(mux, v, s),
                    "(b) multiplexer, window per variant": lambda v, s: per_variant(mux, v),
                    "(c) exact fast ISM, tiled": lambda v, s: tiled(exact, v, s),
                    "(d) ref/alt base model, 2 passes per variant": lambda v, s: ref_alt(v)}


def multiply_adds(model, *args):
    """Multiply-adds of one call of ``model`` (every convolution, 1-d or 2-d as Beluga's, and
    Linear layer, from their output sizes)."""
    total = []

    def hook(module, _, out):
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            total.append(out.numel() * module.in_channels // module.groups * int(np.prod(module.kernel_size)))
        else:
            total.append(out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]
    with torch.no_grad():
        model(*args)
    for h in handles:
        h.remove()
    return sum(total)


def window_costs(mux_model, base, length, per_tile, density, threads, window_batch, base_batch, repeats=3):
    """Seconds and multiply-adds of one Multiplexer window (the trunk on the window, the head on
    ``per_tile`` columns ``density`` bp apart, ``window_batch`` windows a pass) and of one base-model
    pass (``base_batch`` windows a pass), and the bounds on a dense VCF of ``per_tile`` variants a
    tile: (a)/(b) <= ``per_tile``; (a)/(d) <= ``per_tile`` x 2 base passes / one Multiplexer window."""
    from seqmux.encoding import one_hot
    from seqmux.score.engine import MultiplexerScorer

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    centre = (length - 1) // 2
    offsets = centre - (per_tile * density) // 2 + density * np.arange(per_tile)
    tiles = [rng.integers(0, 4, length).astype(np.uint8) for _ in range(window_batch)]
    items = [(t, offsets, (t[offsets].astype(np.int64) + 1) % 4) for t in tiles]
    mux = MultiplexerScorer(mux_model.eval(), "cpu", window_batch)
    mux.windows(items)  # warm-up
    t_mux = min(1 / timed(lambda: len(mux.windows(items))) for _ in range(repeats))  # seconds a window
    x = torch.from_numpy(one_hot(np.stack([rng.integers(0, 4, length).astype(np.uint8)
                                           for _ in range(base_batch)])))
    with torch.no_grad():
        base(x)
        t_base = min(1 / timed(lambda: len(base(x))) for _ in range(repeats))  # seconds a window
    mac_mux = multiply_adds(mux_model, x[:1], torch.from_numpy(offsets)[None])
    mac_base = multiply_adds(base, x[:1])
    return dict(t_mux=t_mux, t_base=t_base, mac_mux=mac_mux, mac_base=mac_base,
                time_bound=per_tile * 2 * t_base / t_mux, mac_bound=per_tile * 2 * mac_base / mac_mux)


def print_costs(title, c, per_tile):
    print(f"\n{title}")
    print("cost\tseconds\tmultiply-adds")
    print(f"one Multiplexer window (head on {per_tile} columns)\t{c['t_mux']:.4g}\t{c['mac_mux']:.3g}")
    print(f"one base-model pass\t{c['t_base']:.4g}\t{c['mac_base']:.3g}")
    print(f"bound on (a)/(b), dense VCF: {per_tile} variants a tile")
    print(f"bound on (a)/(d), dense VCF: {per_tile} x 2 base passes / 1 Multiplexer window = "
          f"{c['time_bound']:.2f} (seconds), {c['mac_bound']:.2f} (multiply-adds)")


def beluga_per_window(threads, stride, density=20):
    """Per-window figures at Beluga shapes (random weights, published layouts, L = 2000, F = 2002):
    seconds for one Multiplexer window (the head on a tile's columns only), fast exact ISM of a
    tile's SNVs, and one batched ref/alt pair of base-model passes; variants a second on a dense VCF
    (one variant every ``density`` bp: a tile of ``stride`` bp holds ``stride / density``)."""
    from seqmux.models import BelugaFamily
    from seqmux.multiplexer import beluga_multiplexer
    from seqmux.score.engine import ExactScorer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    length, per_tile = 2000, max(1, stride // density)
    tokens = rng.integers(0, 4, length).astype(np.uint8)
    centre = (length - 1) // 2
    offsets = np.arange(centre - stride // 2, centre - stride // 2 + per_tile * density, density)[:per_tile]
    alts = (tokens[offsets].astype(np.int64) + 1) % 4
    base = BelugaFamily().eval()
    costs = window_costs(beluga_multiplexer(), base, length, per_tile, density, threads, 1, 8, repeats=1)
    t_mux = costs["t_mux"]
    exact = ExactScorer(base, "logfold", 512, "cpu")
    exact.windows([(tokens, offsets, alts)])
    t_ism = 1 / timed(lambda: len(exact.windows([(tokens, offsets, alts)])))
    t_pair = 2 * costs["t_base"]
    print(f"\nBeluga shapes (random weights; L=2000, F=2002; {threads} CPU threads, shared machine), stride {stride}, "
          f"dense VCF = {per_tile} variants a tile")
    print("method\tseconds a window\tdense variants a second")
    print(f"(a) multiplexer, tiled (head on {per_tile} columns)\t{t_mux:.2f}\t{per_tile / t_mux:.2f}")
    print(f"(b) multiplexer, window per variant (head on 1 column)\t~{t_mux:.2f}\t{1 / t_mux:.2f}")
    print(f"(c) exact fast ISM, tiled ({per_tile} SNVs a tile)\t{t_ism:.2f}\t{per_tile / t_ism:.2f}")
    print(f"(d) ref/alt base model (2 passes a variant, batch 8)\t{t_pair:.3f} a variant\t{1 / t_pair:.2f}")
    print_costs(f"Beluga shapes: per-window costs ({threads} CPU threads)", costs, per_tile)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--stride", type=int, help="stride of the speed tables (default: the measured one)")
    parser.add_argument("--beluga", action="store_true", help="also the per-window figures at Beluga shapes")
    parser.add_argument("--costs-only", action="store_true", help="only the per-window costs (and --beluga)")
    parser.add_argument("--repeats", type=int, default=1, help="speed table: each figure the best of this many, "
                        "the methods timed in turn")
    parser.add_argument("--only", default="", help="speed table: only the inputs whose name starts with this")
    args = parser.parse_args()
    from seqmux.multiplexer import load_multiplexer

    length = load_multiplexer(args.run / "results/multiplexer/model.pt")[1]["length"]
    if args.costs_only:  # the per-window costs at --stride (default 150)
        return costs(args, length, args.stride or 150)
    bins = list(range(0, length // 2 + 25, 25))
    r = accuracy_by_distance(args.run, bins)
    print("distance from centre (bp)\tweighted Pearson (mean over profiles)")
    for lo, hi, v in zip(bins[:-1], bins[1:], r):
        print(f"{lo}-{hi - 1}\t{v:.4f}")
    ok = [2 * hi for hi, v in zip(bins[1:], r) if v >= r[0] - args.margin]
    contiguous = 0
    for hi, v in zip(bins[1:], r):
        if v < r[0] - args.margin:
            break
        contiguous = hi
    stride = min(2 * contiguous, length - 1)
    print(f"centre bin {r[0]:.4f}; margin {args.margin}; bins within it up to {contiguous} bp from the centre "
          f"({len(ok)} of {len(r)}): largest stride {stride}")
    stride = args.stride or stride
    if args.skip_speed:
        return
    inputs, methods = speeds(args.run, args.threads)
    print(f"\nvariants a second (stride {stride}, {args.threads} CPU threads, shared machine)")
    print("input\t" + "\t".join(methods))
    for name, variants in inputs.items():
        if args.only and not name.startswith(args.only):
            continue
        row = [0.0] * len(methods)
        for _ in range(args.repeats):  # the methods in turn, each its best: the load of a shared machine moves
            for k, method in enumerate(methods.values()):
                row[k] = max(row[k], timed(lambda: method(variants, stride)))
        print(f"{name} ({len(variants)})\t" + "\t".join(f"{v:.0f}" for v in row))
    costs(args, length, stride)


def costs(args, length, stride):
    from seqmux.models import load_model
    from seqmux.multiplexer import load_multiplexer

    per_tile = max(1, stride // 20)
    mux_model = load_multiplexer(args.run / "results/multiplexer/model.pt")[0]
    base = load_model(args.run / "resources/demo/base_model.pt").eval()
    print_costs(f"embedded default: per-window costs ({args.threads} CPU threads; Multiplexer 8 windows a pass, "
                f"base model 128)", window_costs(mux_model, base, length, per_tile, 20, args.threads, 8, 128),
                per_tile)
    if args.beluga:
        beluga_per_window(args.threads, stride)


if __name__ == "__main__":
    main()
