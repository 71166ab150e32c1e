import numpy as np
import pyarrow as pa

from seqmux.encoding import tokenize
from seqmux.genome import open_fasta
from seqmux.variants import VARIANT_SCHEMA, expand_shard, substitutions, variant_labels, window_variant_table
from seqmux.windows import Window, write_windows


def test_three_substitutions_per_base_four_at_n():
    tokens = tokenize("ACNT")
    offsets, alts = substitutions(tokens)
    assert len(offsets) == 3 + 3 + 4 + 3
    for o, a in zip(offsets, alts):
        assert a != tokens[o]
    # position-major order
    assert list(offsets) == sorted(offsets)


def test_labels_are_one_based_vcf_style():
    labels = variant_labels("chr11", 999999, np.array([0, 1]), np.array([2, 0]), np.array([0, 3]))
    assert labels.tolist() == ["chr11:1000000 C>A", "chr11:1000001 A>T"]


def test_window_table_matches_genome(demo_dir, tmp_path):
    fa = open_fasta(demo_dir / "genome.fa")
    start, end = 20000, 20050
    seq = fa["chr3"][start:end]
    table = pa.Table.from_batches([window_variant_table(7, "chr3", start, tokenize(seq))])
    assert table.schema == VARIANT_SCHEMA
    assert table.num_rows == 3 * sum(c in "ACGTacgt" for c in seq) + 4 * sum(c not in "ACGTacgt" for c in seq)
    for row in table.to_pylist()[::17]:
        pos = row["position"]  # 1-based
        assert fa["chr3"][pos - 1:pos].upper() == row["ref"] or row["ref"] == "N"
        assert row["label"] == f"chr3:{pos} {row['ref']}>{row['alt']}"
        assert row["offset"] == pos - 1 - start


def test_expand_shard_writes_only_its_windows(demo_dir, tmp_path):
    windows = [Window(i, "train", "chr1", 10000 + 100 * i, 10000 + 100 * i + 64) for i in range(4)]
    write_windows(windows, tmp_path / "w.bed")
    fa = open_fasta(demo_dir / "genome.fa")
    np.save(tmp_path / "t.npy", np.stack([tokenize(fa["chr1"][w.start:w.end]) for w in windows]))
    expand_shard(tmp_path / "w.bed", tmp_path / "t.npy", 1, 2, tmp_path / "v.feather")
    table = pa.ipc.open_file(pa.memory_map(str(tmp_path / "v.feather"))).read_all()
    assert sorted(set(table.column("window_id").to_pylist())) == [2, 3]


def test_every_shard_holds_its_share_of_every_split():
    """hg19's 40,000 / 2,000 / 2,500 windows over 200 shards: each (split, shard) target job gets
    200, 10 and 12 or 13 windows, none is empty, and the shards partition the windows."""
    from seqmux.windows import shard_windows

    counts = {"train": 40000, "validation": 2000, "test": 2500}
    windows, i = [], 0
    for split, n in counts.items():
        windows += [Window(i + k, split, "chr1", 0, 10) for k in range(n)]
        i += n
    seen = []
    for shard in range(200):
        mine = shard_windows(windows, shard, 200)
        per = {s: sum(w.split == s for w in mine) for s in counts}
        assert per["train"] == 200 and per["validation"] == 10 and per["test"] in (12, 13), (shard, per)
        seen += [w.window_id for w in mine]
    assert sorted(seen) == list(range(i))


def test_vcf_without_records_or_header_is_an_error(tmp_path):
    """An empty file, a record before the #CHROM line, or header lines only: one InputError naming
    the file (an empty VCF used to give an empty table and exit 0)."""
    import gzip

    import pytest

    from seqmux.errors import InputError
    from seqmux.variants import read_vcf

    cases = {"empty.vcf": (b"", "empty file: no VCF header and no records"),
             "header.vcf": (b"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n", "no records: the file has header"),
             "nohead.vcf": (b"chr1\t5\t.\tA\tC\n", "a record before the #CHROM header line"),
             "empty.vcf.gz": (gzip.compress(b""), "no #CHROM header line and no records")}
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=problem) as err:
            read_vcf(tmp_path / name, field="circuitsnp.vcf")
        assert err.value.field == "circuitsnp.vcf" and name in str(err.value)


def test_contig_names_match_both_ways():
    from seqmux.variants import ContigMap

    ucsc = ContigMap({"chr1": 10, "chrX": 10, "chrM": 10})
    assert [ucsc.lookup(n) for n in ("1", "chr1", "X", "MT", "M", "chrM", "2")] == [
        "chr1", "chr1", "chrX", "chrM", "chrM", "chrM", None]
    ensembl = ContigMap({"1": 10, "X": 10, "MT": 10})
    assert [ensembl.lookup(n) for n in ("chr1", "1", "chrX", "chrM", "M", "chr2")] == ["1", "1", "X", "MT", "MT", None]


def test_allele_kinds_and_reasons():
    from seqmux.variants import allele_kind

    assert allele_kind("A", "c") == ("snv", None)
    assert allele_kind("AT", "A") == ("indel", None) and allele_kind("A", "AGG")[0] == "indel"
    assert allele_kind("AC", "GT") == ("indel", None)   # an MNV: exact engine, pair of windows
    for alt, reason in (("*", "ALT *"), (".", "no ALT allele"), ("<DEL>", "symbolic"), ("A]1:5]", "symbolic"),
                        ("N", "REF or ALT is not A, C, G or T"), ("A", "ALT equals REF")):
        kind, why = allele_kind("A", alt)
        assert kind is None and why.startswith(reason), (alt, why)


def test_vcf_records_stream_with_line_numbers(tmp_path):
    from seqmux.variants import vcf_records

    (tmp_path / "v.vcf").write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n1\t5\trs1\tA\tC,G\n\n"
                                    "chrM\t9\t.\tAT\t*\n")
    assert list(vcf_records(tmp_path / "v.vcf")) == [
        (f"{tmp_path / 'v.vcf'}:3", "1", 5, "rs1", "A", ["C", "G"]),
        (f"{tmp_path / 'v.vcf'}:5", "chrM", 9, ".", "AT", ["*"])]
