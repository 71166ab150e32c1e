import hashlib

import numpy as np

from seqmux.genome import build_demo_genome, hmm_sequence, open_fasta, read_bed_intervals
from seqmux.motifs import load_jaspar_motifs, log_odds, read_motifs, reverse_complement
from seqmux.encoding import one_hot, tokenize


def test_demo_genome_is_deterministic_and_realistic(tmp_path):
    chroms = {"chr1": 30000, "chr8": 20000, "chr9": 20000}
    for run in ("a", "b"):
        d = tmp_path / run
        build_demo_genome(d / "g.fa", d / "s.bed", d / "m.json", chroms, seed=4, n_motifs=5)
    for name in ("g.fa", "g.fa.fai", "s.bed", "m.json"):
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "b" / name).read_bytes()).digest()
    fa = open_fasta(tmp_path / "a" / "g.fa")
    assert {k: len(fa[k]) for k in fa.keys()} == chroms
    seq = fa["chr1"][:]
    assert seq[:100] == "N" * 100 and seq[-100:] == "N" * 100          # N blocks at the ends
    assert "N" * 1000 in seq[5000:-5000]                                 # and one inside
    assert any(c.islower() for c in seq)                                 # soft-masked stretches


def test_planted_sites_match_their_motifs(tmp_path):
    build_demo_genome(tmp_path / "g.fa", tmp_path / "s.bed", tmp_path / "m.json", {"chr1": 40000}, seed=2,
                      n_motifs=4)
    fa = open_fasta(tmp_path / "g.fa")
    motifs = {f"{m.matrix_id}_{m.name}": m for m in read_motifs(tmp_path / "m.json")}
    sites = [line.split("\t") for line in open(tmp_path / "s.bed")]
    assert len(sites) > 200
    scores, shuffled = [], []
    rng = np.random.default_rng(0)
    for chrom, start, end, name, _, strand in sites:
        x = one_hot(tokenize(fa[chrom][int(start):int(end)]))
        pwm = log_odds(motifs[name].counts)
        if strand.strip() == "-":
            pwm = reverse_complement(pwm)
        scores.append((pwm * x).sum())
        shuffled.append((pwm * x[:, rng.permutation(x.shape[1])]).sum())
    # planted instances score far above the same bases in random order
    assert np.mean(scores) > np.mean(shuffled) + 5
    assert read_bed_intervals(tmp_path / "s.bed")["chr1"][0] == (int(sites[0][1]), int(sites[0][2]))


def test_hmm_gc_content_follows_states():
    """GC content per hidden state (0.6 in the GC-rich state, 0.4 in the GC-poor one), with runs as
    long as the self-transitions say: the demo genome's sequence is that HMM's, draw for draw."""
    from seqmux.hmm import sample_hmm
    from seqmux.genome import GC_POOR, GC_RICH

    length, stay = 200000, (0.99, 0.99)
    seq = hmm_sequence(length, np.random.default_rng(0), stay=stay)
    transition = np.array([[stay[0], 1 - stay[0]], [1 - stay[1], stay[1]]])
    states, symbols = sample_hmm(1, length, np.random.default_rng(0), transition, np.stack([GC_RICH, GC_POOR]))
    assert np.array_equal(np.frombuffer(b"AGCT", dtype=np.uint8)[symbols[0]], seq)
    gc = np.isin(seq, np.frombuffer(b"GC", dtype=np.uint8))
    for state, expected in ((0, 0.6), (1, 0.4)):
        in_state = states[0] == state
        assert in_state.sum() > 50000
        # binomial standard error at >= 50,000 bases: <= 0.0022; 0.015 is about 7 of them
        assert abs(gc[in_state].mean() - expected) < 0.015, (state, gc[in_state].mean())
    runs = np.diff(np.flatnonzero(np.diff(states[0]) != 0))
    assert 70 < runs.mean() < 130  # geometric runs of mean 1 / (1 - 0.99) = 100


def test_jaspar_motifs_come_from_the_wheel():
    motifs = load_jaspar_motifs(min_length=5, max_length=40)
    assert len(motifs) > 500
    ctcf = [m for m in motifs if m.matrix_id == "MA0139.2"]  # CTCF
    assert len(ctcf) == 1 and ctcf[0].counts.shape[0] == 4 and ctcf[0].length >= 15
    assert np.all(np.isfinite(log_odds(ctcf[0].counts)))


# ---- the FASTA index: never read through a stale one, never leave a broken one ----------------------

def _write_fasta(path, records, width=60):
    with open(path, "w") as fh:
        for name, seq in records.items():
            lines = "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
            fh.write(f">{name} some description\n{lines}")


def _random(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def test_index_newer_than_an_edited_fasta_is_rebuilt(tmp_path):
    """The FASTA edited after indexing while the .fai keeps a newer time (a copy, a checkout): the
    offsets no longer match, so the index is rebuilt and the bases read are the FASTA's."""
    import os

    path = tmp_path / "g.fa"
    _write_fasta(path, {"chr1": _random(1000, 1), "chr2": _random(1000, 2)})
    assert len(open_fasta(path)["chr1"]) == 1000
    edited = {"chr1": _random(700, 3), "chr2": _random(1000, 4)}
    _write_fasta(path, edited)
    later = path.stat().st_mtime_ns + 10**9
    os.utime(str(path) + ".fai", ns=(later, later))  # the stale index looks newer
    fasta = open_fasta(path)
    assert {k: fasta[k][:] for k in fasta.keys()} == edited


def test_index_older_than_the_fasta_is_rebuilt(tmp_path):
    import os

    path = tmp_path / "g.fa"
    _write_fasta(path, {"chr1": _random(500, 1)})
    open_fasta(path)
    edited = {"chr1": _random(500, 2)}  # same length: the offsets match, only the time says stale
    _write_fasta(path, edited)
    fai = tmp_path / "g.fa.fai"
    old = path.stat().st_mtime_ns - 10**9
    os.utime(fai, ns=(old, old))
    assert open_fasta(path)["chr1"][:] == edited["chr1"]
    assert fai.stat().st_mtime_ns >= path.stat().st_mtime_ns


def test_failed_index_leaves_nothing_behind(tmp_path):
    import pytest

    from seqmux.errors import InputError

    path = tmp_path / "dup.fa"
    _write_fasta(path, {"chr1": "ACGT" * 10})
    with open(path, "a") as fh:
        fh.write(">chr1 again\nACGT\n")
    with pytest.raises(InputError, match=r"dup.fa: genome.fasta=.*Duplicate key"):
        open_fasta(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.fa"]
    _write_fasta(path, {"chr1": "ACGT" * 10, "chr2": "GGCC" * 5})  # fixed: the same command now works
    assert open_fasta(path)["chr2"][:] == "GGCC" * 5


def test_index_that_cannot_be_written(tmp_path):
    """A FASTA without an index in a folder that cannot be written: one line saying what to do, not
    pyfaidx's advice on its API. The folder is made read-only with chmod, or, for root (whom chmod
    does not stop), made immutable with chattr; the test is skipped where neither works."""
    import os
    import subprocess

    import pytest

    from seqmux.errors import InputError

    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "g.fa"
    _write_fasta(path, {"chr1": "ACGT" * 10})
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only here")
        with pytest.raises(InputError, match=r"g.fa: genome.fasta=.*index g.fa.fai is missing and .*ro is not "
                           r"writable \(.*\): have its owner index it \(samtools faidx\), or link or copy the FASTA"):
            open_fasta(path)
        assert sorted(p.name for p in folder.iterdir()) == ["g.fa"]
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_empty_or_ragged_fasta(tmp_path):
    import pytest

    from seqmux.errors import InputError

    (tmp_path / "e.fa").write_text("")
    with pytest.raises(InputError, match="e.fa: genome.fasta=.*empty file"):
        open_fasta(tmp_path / "e.fa")
    (tmp_path / "r.fa").write_text(">a\nACGT\nAC\nACGT\n")
    with pytest.raises(InputError, match="r.fa: genome.fasta=.*not a readable FASTA: Line length"):
        open_fasta(tmp_path / "r.fa")
    assert not (tmp_path / "r.fa.fai").exists()
