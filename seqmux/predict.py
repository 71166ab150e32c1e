"""Substitution effects of genomic positions and VCF variants, written as tables: the ``predict``
command of the command-line tool.

Inputs are windows of length L centred on 1-based positions (``window_bounds``). A position input
gets a row for every substitution of its window (3 per base, 4 at an N); a VCF input gets a row per
listed SNV, tiled as the ``score`` stage tiles (``seqmux.score.plan.tile_start``): windows laid
along the chromosome with a stride, each SNV read from the one in which it lies most centrally, so
nearby SNVs share one window (one forward pass); an SNV whose tile would leave the chromosome is
read from the window centred on it. Rows are labelled ``chr:pos REF>ALT`` (1-based genomic
``pos``), with a ``window`` column (``chr:pos``, the window centre) because overlapping windows give
the same substitution different effects; the other columns are the output names.

Effects come from the trained multiplexer (one forward pass per window) or from exact ISM of the
base model (``window_effects``), as log-fold change or ``alt - ref``. Every input is checked before
any model runs; outputs are written under temporary names and renamed once everything succeeded.
"""

import contextlib
import gzip
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from .encoding import tokenize
from .errors import InputError
from .genome import chromosome_lengths, open_fasta
from .ism import ModelOutputError
from .outputs import atomic_path
from .runtime import choose_device, progress
from .score.engine import exact_scorer, multiplexer_scorer
from .variants import base_index, check_refs, read_vcf, substitutions, variant_labels
from .windows import check_window, read_regions, window_bounds

log = logging.getLogger(__name__)

FORMATS = {"tsv": ("tsv",), "parquet": ("parquet",), "both": ("tsv", "parquet")}
MAX_LOGGED_SKIPS = 10


@dataclass
class Job:
    """One window to score: its centre, and either every substitution (``alts is None``) or the
    listed alternative bases (indices in A,G,C,T order) at the listed 1-based positions."""
    chrom: str
    pos: int
    alts: list = None
    positions: list = None

    @property
    def name(self):
        return f"{self.chrom}:{self.pos}"


# --- inputs -----------------------------------------------------------------------------------

def position_jobs(lengths, length, chromosome=None, position=None, inputs_file=None):
    """Jobs of the position inputs (``--chromosome/--position`` and ``--inputs-file``), in input
    order, repeats dropped."""
    centres = []
    if chromosome is not None:
        check_window(chromosome, position, lengths, length, "command line", "--chromosome", "--position")
        centres.append((chromosome, position))
    if inputs_file:
        centres += read_regions(inputs_file, lengths, length, field="--inputs-file")
    unique = list(dict.fromkeys(centres))
    if len(unique) < len(centres):
        log.info("%d repeated positions scored once", len(centres) - len(unique))
    return [Job(chrom, pos) for chrom, pos in unique]


def vcf_jobs(path, fasta, lengths, length, stride):
    """Jobs of a VCF, one per tile holding an SNV (``seqmux.score.plan.tile_start``: stride
    ``stride``; the window centred on the SNV when its tile would leave the chromosome), each with
    its SNVs in VCF order, and ``(label, reason)`` of the records not scored: non-SNVs and REF
    mismatches, each logged."""
    from .score.plan import check_stride, tile_start

    check_stride(stride, length, "--stride")
    snvs, skipped = read_vcf(path)
    for chrom, pos, _, _, where in snvs:
        check_window(chrom, pos, lengths, length, where, "CHROM", "POS")
    kept, mismatches = check_refs(snvs, fasta)
    lower = (length - 1) // 2
    jobs = {}
    for chrom, pos, _, alt, _ in kept:
        start = int(tile_start(pos - 1, length, stride))
        if start < 0 or start + length > lengths[chrom]:
            start = window_bounds(pos, length)[0]
        job = jobs.setdefault((chrom, start), Job(chrom, start + lower + 1, alts=[], positions=[]))
        job.alts.append(base_index(alt))
        job.positions.append(pos)
    for label, reason in mismatches:
        skipped.append((label, reason))
    for label, reason in skipped[:MAX_LOGGED_SKIPS]:
        log.warning("skipped %s: %s", label, reason)
    if len(skipped) > MAX_LOGGED_SKIPS:
        log.warning("... and %d more skipped VCF records", len(skipped) - MAX_LOGGED_SKIPS)
    log.info("VCF %s: %d SNVs to score in %d windows (stride %d), %d records skipped (%d REF mismatches)", path,
             len(kept), len(jobs), stride, len(skipped), len(mismatches))
    return list(jobs.values()), skipped


# --- models -----------------------------------------------------------------------------------

def unique_names(names):
    """Output names made unique as pandas does on reading (second ``x`` becomes ``x.1``)."""
    seen, out = {"variant": 1, "window": 1}, []  # the table's own columns
    taken = set(names) | set(seen)
    for name in names:
        if name in seen:
            k = seen[name]
            while f"{name}.{k}" in taken:
                k += 1
            seen[name] = k + 1
            name = f"{name}.{k}"
            taken.add(name)
        else:
            seen[name] = 1
        out.append(name)
    renamed = sum(a != b for a, b in zip(names, out))
    if renamed:
        log.info("%d repeated output names got a .N suffix (as pandas reads them)", renamed)
    return out


# --- outputs ----------------------------------------------------------------------------------

class PredictionWriter:
    """Streams rows to ``PREFIX.tsv.gz`` and/or ``PREFIX.parquet`` (one parquet row group per
    window), with ``PREFIX.json`` (and ``PREFIX.skipped.tsv``), under temporary names: leaving the
    block renames every file, an error removes them all."""

    def __init__(self, prefix, formats, names, metadata, skipped=None):
        self.prefix, self.names, self.metadata = str(prefix), list(names), metadata
        self.final, self.tmp = {}, {}
        for fmt in formats:
            self.final[fmt] = f"{self.prefix}.tsv.gz" if fmt == "tsv" else f"{self.prefix}.parquet"
        if skipped is not None:
            self.final["skipped"] = f"{self.prefix}.skipped.tsv"
        self.final["json"] = f"{self.prefix}.json"
        self.skipped = skipped
        self.rows = 0
        self._tsv = self._parquet = None

    def __enter__(self):
        import pyarrow as pa

        self._files = contextlib.ExitStack()  # every file under a temporary name until all are complete
        self.tmp = {k: self._files.enter_context(atomic_path(v)) for k, v in self.final.items()}

        fields = [pa.field("variant", pa.string()), pa.field("window", pa.string())]
        fields += [pa.field(n, pa.float32()) for n in self.names]
        self._schema = pa.schema(fields, metadata={b"seqmux": json.dumps(self.metadata).encode()})
        if "tsv" in self.final:
            # gzip level 1: compression, not formatting, is what makes a large TSV slow
            self._tsv = gzip.open(self.tmp["tsv"], "wb", compresslevel=1)
            self._tsv.write(("\t".join(["variant", "window", *self.names]) + "\n").encode())
        if "parquet" in self.final:
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(self.tmp["parquet"], self._schema)
        return self

    def add(self, labels, window, values):
        """Rows ``labels [M]`` of one window with effects ``values [M, F]`` (float32; the TSV holds
        each value's shortest decimal form that reads back to the same float32)."""
        import pyarrow as pa

        columns = np.ascontiguousarray(np.asarray(values, dtype=np.float32).T)
        arrays = [pa.array(np.asarray(labels, dtype=str)), pa.array([window] * len(labels), pa.string())]
        arrays += [pa.array(column) for column in columns]
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        if self._tsv is not None:
            import pyarrow.csv as csv

            text = pa.BufferOutputStream()
            csv.write_csv(table, text, csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))
            self._tsv.write(memoryview(text.getvalue()))
        if self._parquet is not None:
            self._parquet.write_table(table)
        self.rows += len(labels)

    def _close(self):
        if self._tsv is not None:
            self._tsv.close()
            self._tsv = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def __exit__(self, exc_type, exc, tb):
        try:
            self._close()
            if exc_type is None:
                if self.skipped is not None:
                    with open(self.tmp["skipped"], "w") as fh:
                        fh.write("variant\treason\n")
                        for label, reason in self.skipped:
                            fh.write(f"{label}\t{reason}\n")
                meta = dict(self.metadata, rows=self.rows,
                            files=sorted(os.path.basename(p) for p in self.final.values()))
                with open(self.tmp["json"], "w") as fh:
                    json.dump(meta, fh, indent=2)
                    fh.write("\n")
        except BaseException:
            self._files.__exit__(*sys.exc_info())  # removes every temporary file
            raise
        self._files.__exit__(exc_type, exc, tb)  # renames them all, or removes them after an error
        return False


# --- the command ------------------------------------------------------------------------------

def predict(genome, output, chromosome=None, position=None, inputs_file=None, vcf=None, exact=False,
            multiplexer="results/multiplexer/model.pt", model_kind="demo", weights=None, modelpath="",
            modelname="", names="", length=None, diff=False, fmt="tsv", device="auto", batch_size=256, stride=150):
    """Score the inputs (a VCF's SNVs tiled with ``stride``) and write ``output``.tsv.gz / .parquet
    (``fmt`` tsv, parquet or both), ``output``.json (what was run) and, for a VCF,
    ``output``.skipped.tsv. Returns the number of rows written."""
    if chromosome is None and not inputs_file and not vcf:
        raise InputError("command line", "inputs", None, "give --chromosome/--position, --inputs-file or --vcf")
    if (chromosome is None) != (position is None):
        missing, given = ("--position", "--chromosome") if chromosome is not None else ("--chromosome", "--position")
        raise InputError("command line", missing, None, f"needed with {given}")
    if fmt not in FORMATS:
        raise InputError("command line", "--format", fmt, "expected tsv, parquet or both")
    mode = "diff" if diff else "logfold"
    fasta = open_fasta(genome, "--genome")
    lengths = chromosome_lengths(fasta)
    dev = choose_device(device, "command line", "--device")
    if exact:
        if weights is None and model_kind == "demo":
            weights = "resources/demo/base_model.pt"
        scorer, names, length = exact_scorer(model_kind, weights or "", modelpath, modelname, names, length, mode,
                                             batch_size, dev)
    else:
        scorer, names, length = multiplexer_scorer(multiplexer, names, length, mode, dev)
    names = unique_names(names)

    jobs = position_jobs(lengths, length, chromosome, position, inputs_file)
    skipped = None
    if vcf:
        vcf_list, skipped = vcf_jobs(vcf, fasta, lengths, length, stride)
        jobs += vcf_list
    if not jobs:
        log.warning("nothing to score: every input was skipped (see %s.skipped.tsv)", output)
    log.info("%d windows of %d bp, %d outputs, %s effects from %s on %s", len(jobs), length, len(names), mode,
             "exact ISM" if exact else "the multiplexer", dev)

    metadata = dict(command="predict", mode=mode, length=length, genome=str(genome), n_outputs=len(names),
                    model="exact" if exact else "multiplexer",
                    model_file=str(weights if exact else multiplexer), model_kind=model_kind if exact else None,
                    windows=len(jobs), skipped=len(skipped) if skipped is not None else None,
                    stride=stride if vcf else None)
    with PredictionWriter(output, FORMATS[fmt], names, metadata, skipped) as writer:
        for job in progress(jobs, len(jobs), "predict"):
            start, end = window_bounds(job.pos, length)
            tokens = tokenize(fasta[job.chrom][start:end])
            if job.alts is None:
                offsets, alts = substitutions(tokens)
            else:
                offsets = np.asarray(job.positions, dtype=np.int32) - 1 - start
                alts = np.asarray(job.alts, dtype=np.int32)
            try:
                values = scorer(tokens, offsets.astype(np.int64), alts.astype(np.int64))
            except ModelOutputError as err:
                flag = "--diff" if diff else "log-fold, no --diff"
                raise InputError(*scorer.source, f"window {job.name} {err} ({flag})") from None
            if values.shape[1] != len(names):
                raise InputError("command line", "--names", f"{len(names)} names",
                                 f"the model has {values.shape[1]} outputs")
            labels = variant_labels(job.chrom, start, offsets, tokens[offsets], alts)
            writer.add(labels, job.name, values)
    log.info("wrote %d rows to %s", writer.rows, ", ".join(writer.final.values()))
    return writer.rows
