"""FASTA access (pyfaidx) and the embedded demo genome.

The demo genome is drawn from a two-state (high / low GC) hidden Markov model with long runs, has
N blocks at the chromosome ends and one inside each chromosome (as real assemblies have), soft-masked
(lower-case) stretches, and planted instances of real JASPAR motifs whose coordinates go to a BED
file. Everything is drawn from one seeded ``numpy.random.Generator``.
"""

import contextlib
import logging
from pathlib import Path

import numpy as np

from . import BASES
from .errors import InputError
from .hmm import sample_hmm
from .motifs import choose_motifs, sample_site, write_motifs
from .outputs import atomic_path

log = logging.getLogger(__name__)

# emission probabilities in A,G,C,T order
GC_RICH = np.array([0.2, 0.3, 0.3, 0.2])
GC_POOR = np.array([0.3, 0.2, 0.2, 0.3])
_LETTERS = np.frombuffer(BASES.encode(), dtype=np.uint8)
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def open_fasta(path, field="genome.fasta"):
    """A pyfaidx ``Fasta`` (raw strings) read through an index that matches the FASTA.

    The ``.fai`` beside the FASTA is used only when it is at least as new as the FASTA and every
    record it lists starts where the FASTA has that record's header (``index_problem``);
    otherwise it is rebuilt under a temporary name and renamed once pyfaidx has read it back, so a
    FASTA that pyfaidx refuses (duplicate names, ragged lines) leaves no index behind. Raises
    InputError naming ``field`` when the file is missing or not a readable FASTA, or when the index
    must be rebuilt in a folder that cannot be written.
    """
    import pyfaidx

    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "FASTA file not found")
    if path.stat().st_size == 0:
        raise InputError(path, field, str(path), "empty file: not a FASTA")
    fai = Path(f"{path}.fai")
    try:
        gzipped = _is_gzip(path)
        problem = None if gzipped else index_problem(path, fai)  # bgzip: pyfaidx's own checks (mtime, .gzi)
    except OSError as err:
        raise InputError(path, field, str(path), f"cannot read the FASTA: {err.strerror or err}") from None
    try:
        if problem:
            _build_index(path, fai, problem, field)
        fasta = pyfaidx.Fasta(str(path), as_raw=True, sequence_always_upper=False, rebuild=gzipped,
                              build_index=gzipped)
    except InputError:
        raise
    except Exception as err:  # pyfaidx raises several types for malformed files
        raise InputError(path, field, str(path), f"not a readable FASTA: {err}".splitlines()[0]) from None
    if len(fasta.keys()) == 0:
        raise InputError(path, field, str(path), "FASTA has no sequences")
    return fasta


def _is_gzip(path):
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _build_index(path, fai, problem, field):
    """Write ``fai`` for ``path`` (``problem``: why the old one cannot be used), whole or not at all."""
    import pyfaidx

    if fai.exists():
        log.warning("%s: the index %s %s: rebuilding it", path, fai.name, problem)
    with atomic_path(fai, unique=True) as tmp:
        try:
            open(tmp, "w").close()  # here, not in pyfaidx, which turns the reason into advice on its API
        except OSError as err:
            state = "missing" if problem == "is missing" else f"stale ({problem})"
            raise InputError(path, field, str(path),
                             f"its index {fai.name} is {state} and {fai.parent} is not writable "
                             f"({err.strerror or err}): have its owner index it (samtools faidx), or link or copy "
                             "the FASTA into a writable folder and use that path") from None
        tmp.unlink()  # pyfaidx builds an index that does not exist
        pyfaidx.Fasta(str(path), indexname=str(tmp), as_raw=True, rebuild=True).close()  # builds, reads back


def index_problem(path, fai):
    """Why the ``.fai`` file ``fai`` cannot be used for the FASTA ``path`` (``None`` when it can).

    Checks, without reading the sequences: the index is not older than the FASTA; each line has
    five integer columns; each record's offset is just after a ``>NAME`` header line; the last
    record ends inside the file with only white space after it. A FASTA edited after it was
    indexed (a record lengthened, shortened, added or removed) fails one of these.
    """
    if not fai.is_file():
        return "is missing"
    if fai.stat().st_mtime_ns < path.stat().st_mtime_ns:
        return "is older than the FASTA"
    size = path.stat().st_size
    try:
        records = []
        for line in fai.read_text().splitlines():
            if line.strip():
                name, *numbers = line.split("\t")
                records.append((name, *map(int, numbers[:4])))
                if len(numbers) < 4:
                    raise ValueError
    except (ValueError, UnicodeDecodeError):
        return "is not a FASTA index"
    if not records:
        return "lists no sequence"
    with open(path, "rb") as fh:
        for name, length, offset, bases, width in records:
            if offset <= 0 or offset > size or (length and bases <= 0):
                return f"does not match the FASTA (record {name})"
            if not _header_before(fh, offset, name):
                return f"does not match the FASTA (no >{name} header at byte {offset})"
        name, length, offset, bases, width = records[-1]
        end = offset + length + (-(-length // bases) * (width - bases) if bases else 0)
        fh.seek(min(end, size))
        tail = fh.read(4097)
        if end > size + (width - bases) or len(tail) > 4096 or tail.strip():
            return f"does not match the FASTA (record {name} does not end where the file does)"
    return None


def _header_before(fh, offset, name):
    """Whether the line ending at byte ``offset`` of the open file is the header ``>name ...``."""
    for back in (512, 65536):
        start = max(0, offset - back)
        fh.seek(start)
        chunk = fh.read(offset - start)
        if not chunk.endswith(b"\n"):
            return False
        line_start = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
        if line_start == 0 and start > 0:
            continue  # a header longer than the chunk: read further back
        header = chunk[line_start:].rstrip(b"\r\n")
        head = name.encode()
        return header.startswith(b">" + head) and (len(header) == len(head) + 1 or header[len(head) + 1:][:1].isspace())
    return False


def chromosome_lengths(fasta):
    """``{name: length}`` in FASTA order."""
    return {name: len(fasta[name]) for name in fasta.keys()}


def hmm_sequence(length, rng, stay=(0.999, 0.999), emissions=(GC_RICH, GC_POOR)):
    """Bases ``[length]`` (uint8 ASCII) from a two-state HMM with self-transition ``stay``.

    Runs alternate between the two states (with two states, leaving one means entering the
    other); run lengths are geometric with mean ``1 / (1 - stay)``; the first state is uniform.
    Drawn by the generic sampler :func:`seqmux.hmm.sample_hmm` (one sequence).
    """
    transition = np.array([[stay[0], 1.0 - stay[0]], [1.0 - stay[1], stay[1]]])
    _, symbols = sample_hmm(1, length, rng, transition, np.stack(emissions))
    return _LETTERS[symbols[0]]


def plant_motifs(seq, motifs, rng, spacing, soft_ok):
    """Write motif instances into ``seq`` (uint8 ASCII, modified in place) about every
    ``spacing`` bp, never over N and never overlapping; both strands. Returns BED-like tuples
    ``(start, end, motif, strand)``."""
    sites = []
    length = len(seq)
    slot = spacing
    for slot_start in range(0, length - slot, slot):
        motif = motifs[int(rng.integers(len(motifs)))]
        k = motif.length
        start = slot_start + int(rng.integers(slot - k))
        window = seq[start:start + k]
        if np.any((window == ord("N")) | (window == ord("n"))):
            continue
        site = sample_site(motif, rng)
        strand = "+"
        if rng.random() < 0.5:
            strand = "-"
            site = site[::-1].translate(_COMPLEMENT)
        lower = soft_ok and bool(np.all(window >= ord("a")))
        seq[start:start + k] = np.frombuffer((site.lower() if lower else site).encode(), dtype=np.uint8)
        sites.append((start, start + k, f"{motif.matrix_id}_{motif.name}", strand))
    return sites


def build_demo_genome(fasta_path, sites_path, motifs_path, chrom_lengths, seed, n_motifs=12, motif_spacing=120,
                      telomere=5000, gap=(2000, 8000), soft_mask_fraction=0.1):
    """Stage: write the demo genome FASTA (+ ``.fai``), the planted-site BED and the motifs (JSON).

    ``chrom_lengths``: ``{name: length}``. Returns the motifs used.
    """
    rng = np.random.default_rng([seed, 101])
    motifs = choose_motifs(n_motifs, rng, max_length=12)
    fasta_path, sites_path = Path(fasta_path), Path(sites_path)
    all_sites = []
    with contextlib.ExitStack() as files:  # the FASTA and the BED: both whole, or neither
        tmp_fa, tmp_bed = (files.enter_context(atomic_path(p)) for p in (fasta_path, sites_path))
        _write_demo_chromosomes(tmp_fa, all_sites, chrom_lengths, motifs, rng, motif_spacing, telomere, gap,
                                soft_mask_fraction)
        with open(tmp_bed, "w") as bed:
            for chrom, start, stop, motif, strand in all_sites:
                bed.write(f"{chrom}\t{start}\t{stop}\t{motif}\t0\t{strand}\n")
        write_motifs(motifs, motifs_path)
    fai = Path(str(fasta_path) + ".fai")
    if fai.exists():
        fai.unlink()
    open_fasta(fasta_path)  # writes the .fai
    log.info("demo genome: %d chromosomes, %d bp, %d planted motif sites of %d JASPAR motifs",
             len(chrom_lengths), sum(chrom_lengths.values()), len(all_sites), len(motifs))
    return motifs


def _write_demo_chromosomes(path, all_sites, chrom_lengths, motifs, rng, motif_spacing, telomere, gap,
                            soft_mask_fraction):
    """The demo chromosomes as FASTA at ``path`` (60 bases a line); planted sites appended to
    ``all_sites`` as ``(chrom, start, end, motif, strand)``."""
    with open(path, "w") as fa:
        for name, length in chrom_lengths.items():
            seq = hmm_sequence(length, rng)
            # soft-masked stretches (repeats in a real assembly are lower case)
            n_masked = int(length * soft_mask_fraction / 500)
            for s in rng.integers(0, max(1, length - 500), size=n_masked):
                seq[s:s + 500] = seq[s:s + 500] | 0x20
            # N blocks: both ends and one internal gap
            end = min(telomere, length // 10)
            seq[:end] = ord("N")
            seq[length - end:] = ord("N")
            g = int(rng.integers(gap[0], gap[1]))
            gs = int(rng.integers(length // 4, max(length // 4 + 1, 3 * length // 4 - g)))
            seq[gs:gs + g] = ord("N")
            for start, stop, motif, strand in plant_motifs(seq, motifs, rng, motif_spacing, True):
                all_sites.append((name, start, stop, motif, strand))
            fa.write(f">{name}\n")
            text = seq.tobytes().decode()
            for i in range(0, length, 60):
                fa.write(text[i:i + 60] + "\n")


def read_bed_intervals(path):
    """``{chrom: [(start, end), ...]}`` from the first three columns of a BED file."""
    out = {}
    with open(path) as fh:
        for line in fh:
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            chrom, start, end = line.split("\t")[:3]
            out.setdefault(chrom, []).append((int(start), int(end)))
    return out
