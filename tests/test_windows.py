import numpy as np
import pytest

from seqmux.encoding import count_n
from seqmux.errors import InputError
from seqmux.genome import open_fasta
from seqmux.windows import read_windows, sample_to_bed, sample_windows, window_bounds

HELD = dict(validation_chroms=["chr7"], test_chroms=["chr8", "chr9"])


def write_fasta(path, records):
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n{seq}\n")
    return path


def random_seq(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def test_window_bounds_beluga_centring():
    # L = 2000: 999 bases before the centre and 1000 after it
    start, end = window_bounds(1_000_000, 2000)
    assert (start, end) == (1_000_000 - 1000, 1_000_000 + 1000)
    assert end - start == 2000
    assert 1_000_000 - 1 - start == 999  # 0-based index of the centre inside the window
    assert window_bounds(100, 5) == (97, 102)


def test_sampling_is_deterministic_split_clean_and_rejects_ns(demo_dir):
    fasta = demo_dir / "genome.fa"
    counts = {"train": 20, "validation": 5, "test": 5}
    a = sample_windows(fasta, 400, 3, counts, seed=11, **HELD)
    b = sample_windows(fasta, 400, 3, counts, seed=11, **HELD)
    c = sample_windows(fasta, 400, 3, counts, seed=12, **HELD)
    assert a == b and a != c
    assert [w.window_id for w in a] == list(range(30))
    fa = open_fasta(fasta)
    chroms_of = {s: {w.chrom for w in a if w.split == s} for s in ("train", "validation", "test")}
    assert chroms_of["validation"] == {"chr7"} and chroms_of["test"] <= {"chr8", "chr9"}
    assert not chroms_of["train"] & {"chr7", "chr8", "chr9"}
    for w in a:
        assert w.end - w.start == 400
        assert count_n(fa[w.chrom][w.start:w.end]) <= 3


def test_bed_round_trip(demo_dir, tmp_path):
    windows = sample_to_bed(demo_dir / "genome.fa", tmp_path / "w.bed", 400, 10, {"train": 3, "validation": 1,
                            "test": 0}, seed=1, **HELD)
    assert read_windows(tmp_path / "w.bed") == windows


def test_regions_file_centres_windows(demo_dir, tmp_path):
    regions = tmp_path / "regions.tsv"
    regions.write_text("chr2\t20000\nchr8\t14999\t15000\tname\n")  # BED: 0-based 14999 = position 15000
    ws = sample_windows(demo_dir / "genome.fa", 400, 10, {}, seed=1, regions=str(regions), **HELD)
    assert [(w.chrom, w.start, w.end, w.split) for w in ws] == [
        ("chr2", 20000 - 200, 20000 + 200, "train"), ("chr8", 15000 - 200, 15000 + 200, "test")]


@pytest.mark.parametrize("content, field, value", [
    ("chr2\t100\n", "position", "100"),
    ("chr2\t39990\n", "position", "39990"),
    ("chrZ\t5000\n", "chrom", "chrZ"),
    ("chr2\tabc\n", "windows.regions", "chr2\tabc"),
])
def test_bad_regions_file(demo_dir, tmp_path, content, field, value):
    regions = tmp_path / "regions.tsv"
    regions.write_text(content)
    with pytest.raises(InputError) as err:
        sample_windows(demo_dir / "genome.fa", 400, 10, {}, seed=1, regions=str(regions), **HELD)
    assert err.value.field == field and str(err.value.value) == value
    assert "regions.tsv:1" in str(err.value)


def test_missing_fasta(tmp_path):
    with pytest.raises(InputError, match="genome.fasta.*not found"):
        sample_windows(tmp_path / "nope.fa", 400, 10, {"train": 1, "validation": 0, "test": 0}, seed=1, **HELD)


def test_unreadable_fasta(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text("this is not a fasta\n>chr1\nACGT\nACGTACGT\nAC\n")
    with pytest.raises(InputError, match="bad.fa"):
        sample_windows(bad, 4, 0, {"train": 1, "validation": 0, "test": 0}, validation_chroms=[], test_chroms=[],
                       seed=1)


def test_held_out_chromosome_absent(tmp_path):
    fa = write_fasta(tmp_path / "g.fa", {"chr1": random_seq(1000, 1)})
    with pytest.raises(InputError) as err:
        sample_windows(fa, 100, 0, {"train": 1, "validation": 1, "test": 0}, validation_chroms=["chr8"],
                       test_chroms=[], seed=1)
    assert err.value.field == "windows.validation_chroms" and err.value.value == "chr8"


def test_window_longer_than_chromosome(tmp_path):
    fa = write_fasta(tmp_path / "g.fa", {"chr1": random_seq(1000, 1), "chr8": random_seq(300, 2)})
    with pytest.raises(InputError, match="chr8.*shorter than windows.length=400"):
        sample_windows(fa, 400, 0, {"train": 1, "validation": 1, "test": 0}, validation_chroms=["chr8"],
                       test_chroms=[], seed=1)


def test_all_n_chromosome_fails_in_bounded_time(tmp_path):
    fa = write_fasta(tmp_path / "g.fa", {"chr1": random_seq(1000, 1), "chr8": "N" * 5000})
    with pytest.raises(InputError, match="chr8 yielded no window"):
        sample_windows(fa, 100, 5, {"train": 1, "validation": 3, "test": 0}, validation_chroms=["chr8"],
                       test_chroms=[], seed=1)


@pytest.mark.parametrize("content, field, value", [
    ("chr2\t5000\t4000\n", "end", "4000"),           # start > end
    ("chr2\t5000\t5000\n", "end", "5000"),           # empty interval
    ("chr2\t-10\t20000\n", "start", "-10"),          # negative start
    ("chr2\t39000\t40001\n", "end", "40001"),        # past the chromosome's end (40,000 bp)
    ("chr2\t0\n", "position", "0"),                  # 1-based positions start at 1
])
def test_bad_regions_intervals(demo_dir, tmp_path, content, field, value):
    regions = tmp_path / "regions.bed"
    regions.write_text("chr2\t20000\t20010\n" + content)
    with pytest.raises(InputError) as err:
        sample_windows(demo_dir / "genome.fa", 400, 10, {}, seed=1, regions=str(regions), **HELD)
    assert err.value.field == field and str(err.value.value) == value
    assert "regions.bed:2" in str(err.value)


def test_every_chromosome_held_out(tmp_path):
    fa = write_fasta(tmp_path / "g.fa", {"chr7": random_seq(1000, 1), "chr8": random_seq(1000, 2)})
    with pytest.raises(InputError, match=r"windows.count.train=1: every chromosome of the FASTA \(2\) is held out"):
        sample_windows(fa, 100, 0, {"train": 1, "validation": 1, "test": 1}, validation_chroms=["chr7"],
                       test_chroms=["chr8"], seed=1)
    with pytest.raises(InputError, match=r"windows.count.train=0: at least 1 training window"):
        from seqmux.windows import check_windows
        check_windows({"chr1": 1000}, 100, {"train": 0}, [], [], min_train=1)
