"""Mutation expansion: every single-nucleotide substitution of a window, as a table.

A substitution of window ``w`` is (offset, alt): ``offset`` is 0-based within the window, ``alt``
a base index in A,G,C,T order. Identity substitutions are not listed; at an N every base is a
substitution. Labels are 1-based, VCF style: ``chr11:1000000 C>A``.
"""

import numpy as np
import pyarrow as pa

from . import BASES

_LETTERS = np.array(list(BASES + "N"))


def substitutions(tokens):
    """``(offsets [M], alts [M])`` int32 of all substitutions of one window's tokens ``[L]``,
    position-major (offset ascending, then alt in A,G,C,T order)."""
    tokens = np.asarray(tokens)
    grid = np.broadcast_to(np.arange(4, dtype=np.int32), (tokens.shape[0], 4))
    keep = grid != tokens[:, None]  # at an N (token N_TOKEN) all four bases are substitutions
    offsets = np.nonzero(keep)[0].astype(np.int32)
    return offsets, grid[keep].astype(np.int32)


def variant_labels(chrom, start, offsets, ref_tokens, alts):
    """``chrom:pos REF>ALT`` labels, ``pos`` 1-based (window BED ``start`` is 0-based)."""
    pos = (start + 1 + np.asarray(offsets)).astype(str)
    return np.char.add(np.char.add(np.char.add(np.char.add(f"{chrom}:", pos), " "),
                                   np.char.add(_LETTERS[ref_tokens], ">")), _LETTERS[alts])


VARIANT_SCHEMA = pa.schema([
    ("window_id", pa.int64()),
    ("offset", pa.int32()),
    ("position", pa.int64()),
    ("ref", pa.string()),
    ("alt", pa.string()),
    ("alt_index", pa.int8()),
    ("label", pa.string()),
])


def window_variant_table(window_id, chrom, start, tokens):
    """Arrow record batch of every substitution of one window (``VARIANT_SCHEMA``)."""
    offsets, alts = substitutions(tokens)
    ref = tokens[offsets]
    return pa.record_batch([
        pa.array(np.full(len(offsets), window_id, dtype=np.int64)),
        pa.array(offsets),
        pa.array(start + 1 + offsets.astype(np.int64)),
        pa.array(_LETTERS[ref]),
        pa.array(_LETTERS[alts]),
        pa.array(alts.astype(np.int8)),
        pa.array(variant_labels(chrom, start, offsets, ref, alts)),
    ], schema=VARIANT_SCHEMA)


def expand_shard(windows_bed, tokens_npy, shard, n_shards, out):
    """Stage: the substitution table of one shard's windows, as a feather file."""
    from .outputs import atomic_path
    from .windows import read_windows, shard_windows

    windows = shard_windows(read_windows(windows_bed), shard, n_shards)
    tokens = np.load(tokens_npy, mmap_mode="r")
    with atomic_path(out) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, VARIANT_SCHEMA) as writer:
        for w in windows:
            writer.write_batch(window_variant_table(w.window_id, w.chrom, w.start, np.asarray(tokens[w.window_id])))


# --- VCF input --------------------------------------------------------------------------------

_BASE_INDEX = {b: i for i, b in enumerate(BASES)}


def snv_label(chrom, pos, ref, alt):
    """``chrom:pos REF>ALT`` of one variant (``pos`` 1-based, as in a VCF)."""
    return f"{chrom}:{pos} {ref}>{alt}"


def vcf_records(path, field="--vcf"):
    """Stream the records of a VCF (plain, gzipped or bgzipped): yields
    ``(where, chrom, pos, id, ref, alts)`` per record, ``where`` = ``file:line``, ``pos`` 1-based,
    ``ref`` and ``alts`` (a list, split at the commas) as written. One record in memory at a time.

    Header lines (``#``) and blank lines are skipped. Raises InputError for a missing or empty
    file, a file without the ``#CHROM`` header line before its first record, a file with no record,
    a line without CHROM POS ID REF ALT and a POS that is not an integer.

    The records are read as text, not by htslib (pysam): htslib refuses a VCF without its
    ``##fileformat`` line or with fewer than eight columns, which hand-made VCFs often are;
    everything it would check on a record is checked here, and the outputs are written by pysam.
    """
    import gzip
    from pathlib import Path

    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "VCF file not found")
    if path.stat().st_size == 0:
        raise InputError(path, field, str(path), "empty file: no VCF header and no records")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    header = records = 0
    try:
        with opener(path, "rt") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("#CHROM"):
                    header = lineno
                if line.startswith("#") or not line.strip():
                    continue
                where = f"{path}:{lineno}"
                if not header:
                    raise InputError(where, field, line.strip()[:80],
                                     "a record before the #CHROM header line: not a VCF (a VCF starts with "
                                     "##fileformat and #CHROM POS ID REF ALT ... lines)")
                records += 1
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) < 5:
                    raise InputError(where, field, line.strip()[:80],
                                     "expected tab-separated CHROM POS ID REF ALT ...")
                chrom, pos_text, vid, ref_text, alt_text = fields[:5]
                try:
                    pos = int(pos_text)
                except ValueError:
                    raise InputError(where, "POS", pos_text, "not an integer") from None
                yield where, chrom, pos, vid, ref_text, alt_text.split(",")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(path, field, str(path), f"cannot read VCF: {err}".splitlines()[0]) from None
    if not records:
        problem = "no records: the file has header lines only" if header else "no #CHROM header line and no records"
        raise InputError(path, field, str(path), problem)


def allele_kind(ref, alt):
    """``("snv" | "indel", None)`` for an allele that can be scored, ``(None, reason)`` otherwise.
    ``indel`` covers insertions, deletions and multi-nucleotide variants (REF and ALT of A, C, G,
    T, not equal); ``*``, ``.``, symbolic and breakend ALTs are skipped with their reason."""
    ref, alt = ref.upper(), alt.upper()
    if alt == ".":
        return None, "no ALT allele"
    if alt == "*":
        return None, "ALT * (a deletion upstream overlaps this site)"
    if alt.startswith("<") or "[" in alt or "]" in alt:
        return None, "symbolic ALT allele"
    if not ref or set(ref) - set(BASES) or set(alt) - set(BASES) or not alt:
        return None, "REF or ALT is not A, C, G or T"
    if ref == alt:
        return None, "ALT equals REF"
    return ("snv" if len(ref) == len(alt) == 1 else "indel"), None


def read_vcf(path, field="--vcf"):
    """The single-nucleotide variants of a VCF (plain or gzipped) and the records that are not.

    Returns ``(snvs, skipped)``: ``snvs`` a list of ``(chrom, pos, ref, alt, where)`` with ``pos``
    1-based, ``ref``/``alt`` upper-case single bases (A, C, G or T) and ``where`` = ``file:line``;
    one entry per ALT allele (multi-allelic records are split at the commas); exact repeats are
    kept once. ``skipped``: ``(label, reason)`` of every other allele (indels, symbolic or missing
    ALT, REF/ALT not A/C/G/T, ALT equal to REF, repeats). Errors: ``vcf_records``.
    """
    snvs, skipped, seen = [], [], set()
    for where, chrom, pos, _, ref_text, alts in vcf_records(path, field):
        ref = ref_text.upper()
        for alt_raw in alts:
            alt = alt_raw.upper()
            label = snv_label(chrom, pos, ref_text, alt_raw)
            kind, reason = allele_kind(ref, alt)
            if kind == "indel":
                skipped.append((label, "not a single-nucleotide variant"))
            elif kind is None:
                skipped.append((label, reason if reason.startswith(("REF or", "ALT equals", "no ALT", "symbolic"))
                                else "symbolic ALT allele"))
            elif (chrom, pos, ref, alt) in seen:
                skipped.append((label, "repeated in the VCF, scored once"))
            else:
                seen.add((chrom, pos, ref, alt))
                snvs.append((chrom, pos, ref, alt, where))
    return snvs, skipped


def check_refs(snvs, fasta):
    """Split VCF SNVs into those whose REF matches the genome (case-insensitive) and those that do
    not. Returns ``(kept, mismatches)``; a mismatch is ``(label, reason)`` naming the genome's base.
    Chromosomes and positions must already be known to be inside the FASTA."""
    kept, mismatches = [], []
    for chrom, pos, ref, alt, where in snvs:
        base = fasta[chrom][pos - 1:pos].upper()
        if base != ref:
            mismatches.append((snv_label(chrom, pos, ref, alt), f"REF mismatch: genome has {base} at {chrom}:{pos}"))
        else:
            kept.append((chrom, pos, ref, alt, where))
    return kept, mismatches


def base_index(base):
    """Index of a base in A,G,C,T order."""
    return _BASE_INDEX[base]


# --- contig names -------------------------------------------------------------------------------

_MITO = ("chrM", "MT", "M", "chrMT")


def contig_aliases(name):
    """Names a contig may have in another naming style, in order of preference: ``1`` and
    ``chr1``, ``X`` and ``chrX``, ``MT``, ``M``, ``chrM`` and ``chrMT``."""
    out = [name]
    if name in _MITO:
        out += [m for m in _MITO if m != name]
    elif name.startswith("chr"):
        out.append(name[3:])
    else:
        out.append("chr" + name)
    return out


class ContigMap:
    """A VCF's or BED's contig names matched to the FASTA's, both ways (``1`` -> ``chr1`` and
    ``chr1`` -> ``1``, ``MT`` <-> ``chrM``), cached. ``lookup(name)``: the FASTA's name or None."""

    def __init__(self, lengths):
        self.lengths = lengths
        self.cache = {}

    def lookup(self, name):
        if name not in self.cache:
            self.cache[name] = next((a for a in contig_aliases(name) if a in self.lengths), None)
        return self.cache[name]

    def known(self, limit=5):
        names = list(self.lengths)
        return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
