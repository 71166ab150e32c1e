"""The plan: every allele of a VCF (or every SNV of the regions of a BED file) checked against the
FASTA and assigned to a window and a shard, written once as ``plan.parquet`` (+ ``plan.json``).

Tiling: windows of length L are laid along each chromosome with a stride S; tile ``k`` is centred
on the 0-based position ``k S + S // 2``, and an SNV at 0-based position ``p`` is read from tile
``p // S``, the one in which it lies most centrally (at most ``S / 2`` from the centre). Nearby
SNVs share their tile's forward pass. Tiles that leave a chromosome are padded with N (flag
``n_padded``). An indel or MNV (exact engine only) gets its own pair of windows, centred on the
variant (``seqmux.score.engine.allele_windows``).

Shards: a tile's SNVs all go to one shard (``crc32`` of the tile), so a shard job streams the plan,
keeps its own rows, and meets the rows of one tile one after the other when the input is sorted.
"""

import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import BASES
from ..encoding import tokenize
from ..errors import InputError
from ..genome import chromosome_lengths, open_fasta
from ..outputs import atomic_path
from ..variants import ContigMap, allele_kind, contig_aliases, substitutions, vcf_records
from ..windows import check_bed_interval

log = logging.getLogger(__name__)

PLAN_SCHEMA = pa.schema([
    ("record", pa.int64()),        # 0-based record index in the VCF; -1 for an SNV of a region
    ("allele", pa.int16()),        # 0-based ALT index in the record (a region's SNV: the base index)
    ("source", pa.string()),       # "vcf" or the region's name
    ("chrom", pa.string()),        # as in the input
    ("pos", pa.int64()),           # 1-based
    ("id", pa.string()),
    ("ref", pa.string()),
    ("alt", pa.string()),
    ("fasta_chrom", pa.string()),
    ("kind", pa.string()),         # snv | indel
    ("flipped", pa.bool_()),       # the genome has ALT (REF and ALT swapped): scored as -(effect of REF)
    ("subst", pa.int8()),          # SNV: the base put into the window (A,G,C,T index); -1 for an indel
    ("window_start", pa.int64()),  # SNV: its tile; indel: the window centred on the genome's allele
    ("shard", pa.int32()),         # -1 when skipped
    ("reason", pa.string()),       # why the allele is not scored ("" when it is)
])
ROWS_PER_BATCH = 65536
MIN_DIAGNOSED = 20  # REF checks before the mismatch fraction can stop the run


def tile_start(p0, length, stride):
    """0-based start of the tile of 0-based position(s) ``p0`` (numpy or int)."""
    return (p0 // stride) * stride + stride // 2 - (length - 1) // 2


def check_stride(stride, length, field="score.stride"):
    """InputError unless every position lies inside its tile (``stride`` at most ``L - 1``)."""
    lower = (length - 1) // 2
    if stride < 1 or stride // 2 > lower or stride - stride // 2 - 1 > length - 1 - lower:
        raise InputError("config", field, stride, f"a stride must be between 1 and {length - 1} for "
                         f"{length} bp windows (a tile must hold every position it is given)")


def shard_of(key, n_shards):
    return zlib.crc32(key.encode()) % n_shards


def centred_start(p0, allele_length, length):
    """0-based start of the window centred on an allele of ``allele_length`` bases at ``p0``."""
    return p0 + (allele_length - 1) // 2 - (length - 1) // 2


class PlanWriter:
    """Rows of ``PLAN_SCHEMA`` streamed to a parquet file, ``ROWS_PER_BATCH`` a row group."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(str(path), PLAN_SCHEMA)
        self.columns = {name: [] for name in PLAN_SCHEMA.names}
        self.rows = 0

    def add(self, **row):
        for name, column in self.columns.items():
            column.append(row[name])
        if len(self.columns["record"]) >= ROWS_PER_BATCH:
            self.flush()

    def add_arrays(self, **arrays):
        self.flush()
        self.writer.write_table(pa.table({n: pa.array(arrays[n], type=PLAN_SCHEMA.field(n).type)
                                          for n in PLAN_SCHEMA.names}, schema=PLAN_SCHEMA))
        self.rows += len(arrays["record"])

    def flush(self):
        if self.columns["record"]:
            self.writer.write_table(pa.table(self.columns, schema=PLAN_SCHEMA))
            self.rows += len(self.columns["record"])
            self.columns = {name: [] for name in PLAN_SCHEMA.names}

    def close(self):
        self.flush()
        self.writer.close()


class TileSample:
    """A seeded reservoir sample of ``k`` distinct tiles (met one after the other in the plan): the
    windows the accuracy flag scores exactly too."""

    def __init__(self, k, seed):
        self.k, self.rng, self.seen, self.sample, self.last = k, np.random.default_rng([seed, 19]), 0, [], None

    def offer(self, key):
        if key == self.last:
            return
        self.last = key
        self.seen += 1
        if self.k == 0:
            return
        if len(self.sample) < self.k:
            self.sample.append(key)
        else:
            j = int(self.rng.integers(self.seen))
            if j < self.k:
                self.sample[j] = key


def _unknown_contig(where, field, chrom, contigs):
    also = " or ".join(a for a in contig_aliases(chrom)[1:])
    return InputError(where, field, chrom, f"contig not in the FASTA, also not as {also} (it has {contigs.known()})")


def _diagnose(counts, max_fraction, source):
    """The REF-check summary; InputError naming the likely cause when too many alleles fail."""
    checked, bad, swapped = counts["ref_checked"], counts["ref_mismatch"], counts["flipped"]
    fraction = (bad + swapped) / checked if checked else 0.0
    diagnosis = dict(checked=checked, mismatches=bad, swapped=swapped, fraction=fraction, threshold=max_fraction)
    if checked >= MIN_DIAGNOSED and fraction > max_fraction:
        if swapped > bad:
            cause = (f"{swapped} of them match with REF and ALT swapped: the alleles are swapped (ALT given as "
                     "the reference allele)")
        else:
            cause = (f"only {swapped} would match with REF and ALT swapped: the VCF is likely on another genome "
                     "build than the FASTA (e.g. hg38 calls on hg19)")
        raise InputError(source, "REF", f"{bad + swapped} of {checked}",
                         f"{100 * fraction:.1f}% of the alleles do not match the FASTA's bases (score.max_ref_mismatch"
                         f"={max_fraction}): {cause}")
    return diagnosis


def plan_vcf(vcf, fasta, lengths, writer, counts, sample, length, stride, engine, n_shards):
    """Plan rows of every allele of a VCF (streamed)."""
    contigs = ContigMap(lengths)
    for record, (where, chrom, pos, vid, ref_text, alts) in enumerate(vcf_records(vcf, "score.vcf")):
        counts["records"] += 1
        fchrom = contigs.lookup(chrom)
        if fchrom is None:
            raise _unknown_contig(where, "CHROM", chrom, contigs)
        n = lengths[fchrom]
        ref = ref_text.upper()
        genome_ref = fasta[fchrom][pos - 1:pos - 1 + len(ref)].upper() if 1 <= pos <= n else ""
        done = set()
        for allele, alt_raw in enumerate(alts):
            counts["alleles"] += 1
            alt = alt_raw.upper()
            kind, reason = allele_kind(ref, alt)
            flipped, subst, start, shard = False, -1, 0, -1
            if kind and not 1 <= pos <= n:
                kind, reason = None, f"POS outside {fchrom} (1..{n})"
            if kind and alt in done:
                kind, reason = None, "ALT repeated in the record"
            if kind:
                done.add(alt)
                counts["ref_checked"] += 1
                if genome_ref != ref:
                    if fasta[fchrom][pos - 1:pos - 1 + len(alt)].upper() == alt:
                        flipped = True
                        counts["flipped"] += 1
                    else:
                        counts["ref_mismatch"] += 1
                        kind, reason = None, f"REF mismatch: genome has {genome_ref or 'N'} at {fchrom}:{pos}"
            if kind == "indel" and engine == "multiplexer":
                kind, reason = None, "indel or MNV: the multiplexer engine scores SNVs only (score.engine: exact does)"
            if kind == "snv":
                subst = BASES.index(ref if flipped else alt)
                start = int(tile_start(pos - 1, length, stride))
                shard = shard_of(f"{fchrom}:{start}", n_shards)
                sample.offer((fchrom, start))
            elif kind == "indel":
                start = centred_start(pos - 1, len(alt if flipped else ref), length)
                shard = shard_of(f"{record}:{allele}", n_shards)
                counts["indel_windows"] += 1
            writer.add(record=record, allele=allele, source="vcf", chrom=chrom, pos=pos, id=vid, ref=ref_text,
                       alt=alt_raw, fasta_chrom=fchrom, kind=kind or "", flipped=flipped, subst=subst,
                       window_start=start, shard=shard, reason=reason or "")
            if kind:
                counts["planned"] += 1


def region_name(fields, chrom, start, end):
    """A region's map name: its BED name (column 4), else ``chrom_start_end``; safe as a file name."""
    name = fields[3] if len(fields) > 3 and fields[3] not in ("", ".") else f"{chrom}_{start}_{end}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def map_names(path):
    """The map names of a BED file's regions, in file order, once each (no checks: ``read_bed``)."""
    names = []
    with open(path) as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("\t")
            if line.strip() and not line.startswith(("#", "track", "browser")) and len(fields) >= 3:
                names.append(region_name(fields, *fields[:3]))
    return list(dict.fromkeys(names))


def read_bed(path, lengths, field="score.regions"):
    """``[(name, chrom, fasta_chrom, start, end)]`` of a BED file, checked: a known contig (after
    aliasing), ``0 <= start < end <= length``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "BED file not found")
    contigs, out = ContigMap(lengths), []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            where = f"{path}:{lineno}"
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3:
                raise InputError(where, field, line.strip()[:80], "expected tab-separated chrom start end [name]")
            chrom = fields[0]
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise InputError(where, "start", fields[1], "BED start and end must be integers") from None
            fchrom = contigs.lookup(chrom)
            if fchrom is None:
                raise _unknown_contig(where, "chrom", chrom, contigs)
            check_bed_interval(where, fchrom, start, end, lengths[fchrom])
            out.append((region_name(fields, chrom, start, end), chrom, fchrom, start, end))
    if not out:
        raise InputError(path, field, str(path), "no regions in the file")
    return out


def plan_regions(regions, fasta, lengths, writer, counts, sample, length, stride, n_shards, chunk=100_000):
    """Plan rows of every SNV of every base of the regions (4 at an N), in chunks of ``chunk`` bp."""
    letters = np.array(list(BASES + "N"))
    for name, chrom, fchrom, start, end in read_bed(regions, lengths):
        counts["regions"] += 1
        for lo in range(start, end, chunk):
            hi = min(end, lo + chunk)
            tokens = tokenize(fasta[fchrom][lo:hi])
            offsets, alts = substitutions(tokens)
            p0 = lo + offsets.astype(np.int64)
            starts = tile_start(p0, length, stride)
            keys = np.unique(starts)
            shard_by_start = {int(s): shard_of(f"{fchrom}:{int(s)}", n_shards) for s in keys}
            for s in keys:
                sample.offer((fchrom, int(s)))
            m = len(p0)
            writer.add_arrays(record=np.full(m, -1), allele=alts.astype(np.int16), source=[name] * m,
                              chrom=[chrom] * m, pos=p0 + 1, id=[name] * m, ref=letters[tokens[offsets]],
                              alt=letters[alts], fasta_chrom=[fchrom] * m, kind=["snv"] * m,
                              flipped=np.zeros(m, bool), subst=alts.astype(np.int8), window_start=starts,
                              shard=np.array([shard_by_start[int(s)] for s in starts], dtype=np.int32),
                              reason=[""] * m)
            counts["alleles"] += m
            counts["planned"] += m


def make_plan(genome, out_plan, out_info, vcf="", regions="", length=400, stride=150, engine="multiplexer",
              n_shards=1, seed=1, max_ref_mismatch=0.1, accuracy_windows=0):
    """Stage: the plan of a VCF and/or regions (``plan.parquet``, ``plan.json``). Raises InputError
    (nothing written) for bad input, too many REF mismatches (with the diagnosis), or more shards
    than windows to score."""
    if not vcf and not regions:
        raise InputError("config", "score.vcf", vcf, "give score.vcf and/or score.regions")
    check_stride(stride, length)
    fasta = open_fasta(genome)
    lengths = chromosome_lengths(fasta)
    counts = dict(records=0, alleles=0, planned=0, ref_checked=0, ref_mismatch=0, flipped=0, indel_windows=0,
                  regions=0)
    sample = TileSample(accuracy_windows if engine == "multiplexer" else 0, seed)
    tiles = TileSample(0, seed)  # counts distinct tiles only
    with atomic_path(out_plan) as tmp:
        writer = PlanWriter(tmp)
        counting = _Both(sample, tiles)
        try:
            if vcf:
                plan_vcf(vcf, fasta, lengths, writer, counts, counting, length, stride, engine, n_shards)
            if regions:
                plan_regions(regions, fasta, lengths, writer, counts, counting, length, stride, n_shards)
        finally:
            writer.close()
        diagnosis = _diagnose(counts, max_ref_mismatch, vcf or regions)
        units = tiles.seen + counts["indel_windows"]
        if n_shards > max(units, 1):
            raise InputError("config", "score.shards", n_shards,
                             f"more shards than the {units} windows to score: use at most {max(units, 1)}")
        info = dict(counts=counts, ref_check=diagnosis, tiles=tiles.seen, windows=units, n_shards=n_shards,
                    length=length, stride=stride, engine=engine, vcf=str(vcf), regions=str(regions),
                    accuracy_windows=[list(k) for k in sample.sample])
        with atomic_path(out_info) as tmp_info:
            Path(tmp_info).write_text(json.dumps(info, indent=2) + "\n")
    log.info("plan: %d records, %d alleles, %d to score in %d tiles + %d indel windows over %d shards; REF check %s",
             counts["records"], counts["alleles"], counts["planned"], tiles.seen, counts["indel_windows"], n_shards,
             diagnosis)
    return info


class _Both:
    def __init__(self, *samples):
        self.samples = samples

    def offer(self, key):
        for s in self.samples:
            s.offer(key)
