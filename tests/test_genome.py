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
    seq = hmm_sequence(200000, np.random.default_rng(0), stay=(0.99, 0.99))
    gc = np.isin(seq, np.frombuffer(b"GC", dtype=np.uint8)).mean()
    assert 0.45 < gc < 0.55  # two symmetric states: half the time GC-rich (0.6), half GC-poor (0.4)


def test_jaspar_motifs_come_from_the_wheel():
    motifs = load_jaspar_motifs(min_length=5, max_length=40)
    assert len(motifs) > 500
    ctcf = [m for m in motifs if m.matrix_id == "MA0139.2"]  # CTCF
    assert len(ctcf) == 1 and ctcf[0].counts.shape[0] == 4 and ctcf[0].length >= 15
    assert np.all(np.isfinite(log_odds(ctcf[0].counts)))
