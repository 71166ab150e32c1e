"""Check: are exact ISM targets bit-identical from one process to the next, per CPU thread count?

Builds a small demo genome and demo base model in a temporary folder, then runs ``--rounds``
rounds of ``--parallel`` processes at once (more processes than cores: a loaded machine, as a
cluster node or a CI runner often is). Each process computes the targets of the same
``--windows`` windows with ``seqmux.ism.window_targets`` (fast ISM, what the target stage and
``seqmux predict --exact`` run) on ``--threads`` torch threads and prints one digest of each
window's targets. Prints, per thread count, how many processes gave the most common digests and
how many windows ever differed. Not a test: the outcome depends on the machine and its load.

    PYTHONPATH=. python benchmarks/thread_reproducibility.py                # 1 and 2 threads
    PYTHONPATH=. python benchmarks/thread_reproducibility.py --threads 2 --rounds 16
"""

import argparse
import collections
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENGTH = 320


def build(folder):
    """A two-chromosome demo genome and its demo base model (the CLI tests' sizes)."""
    from seqmux.genome import build_demo_genome
    from seqmux.models import write_demo_model

    build_demo_genome(folder / "genome.fa", folder / "sites.bed", folder / "motifs.json",
                      {"chr1": 30000, "chr2": 30000}, seed=3, n_motifs=6)
    write_demo_model(folder / "genome.fa", folder / "motifs.json", folder / "model.pt", folder / "names.txt",
                     LENGTH, 6, 3, (24, 32, 32), 32, n_calibration=16)


def worker(folder, threads, starts):
    """Digest of the targets of each window ``chr1:start+LENGTH``, one line."""
    import torch

    from seqmux.encoding import tokenize
    from seqmux.genome import open_fasta
    from seqmux.ism import window_targets
    from seqmux.models import load_model
    from seqmux.variants import substitutions

    torch.set_num_threads(threads)
    model = load_model(folder / "model.pt").eval()
    fasta = open_fasta(folder / "genome.fa")
    digests = []
    for start in starts:
        tokens = tokenize(fasta["chr1"][start:start + LENGTH])
        offsets, alts = substitutions(tokens)
        _, target = window_targets(model, tokens, offsets, alts)
        digests.append(hashlib.sha1(target.tobytes()).hexdigest()[:10])
    print(" ".join(digests))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel", type=int, default=3, help="processes at once (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per thread count (default: %(default)s)")
    parser.add_argument("--windows", type=int, default=4, help="windows per process (default: %(default)s)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder, threads, starts = args.worker
        worker(Path(folder), int(threads), [int(s) for s in starts.split(",")])
        return
    starts = ",".join(str(2000 + 5000 * i) for i in range(args.windows))
    print(f"{os.cpu_count()} CPUs; {args.parallel} processes at once, {args.rounds} rounds, {args.windows} windows "
          f"of {LENGTH} bp each (demo model, fast ISM, float32)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for threads in args.threads:
            lines = []
            for _ in range(args.rounds):
                procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(folder), str(threads), starts],
                                          stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.parallel)]
                for proc in procs:
                    out, _ = proc.communicate()
                    if proc.returncode:
                        sys.exit(f"a worker failed with exit status {proc.returncode}")
                    lines.append(out.split())
            common, count = collections.Counter(map(tuple, lines)).most_common(1)[0]
            differing = sum(len({line[w] for line in lines}) > 1 for w in range(args.windows))
            print(f"{threads} thread(s): {count} of {len(lines)} processes gave the most common targets; "
                  f"windows that ever differed: {differing} of {args.windows}")


if __name__ == "__main__":
    main()
