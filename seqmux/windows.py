"""Window sampling: chromosome splits, uniform centres, N rejection, regions files.

A window of length L around a 1-based centre ``pos`` covers ``lower = (L - 1) // 2`` bases before
``pos`` and ``upper = L - 1 - lower`` after it (Beluga: 999 and 1000 for L = 2000). Window tables
are BED: 0-based half-open ``start``/``end``, then ``window_id`` and ``split``.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoding import N_TOKEN, count_n, tokenize
from .errors import InputError
from .genome import chromosome_lengths, open_fasta
from .outputs import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ATTEMPTS_PER_WINDOW = 200        # rejection-sampling budget per requested window
ATTEMPTS_BEFORE_GIVING_UP = 500  # draws from one chromosome with no success before it is an error


@dataclass(frozen=True)
class Window:
    window_id: int
    split: str
    chrom: str
    start: int  # 0-based
    end: int    # exclusive


def window_bounds(pos, length):
    """0-based half-open ``(start, end)`` of the window centred on 1-based ``pos``."""
    lower = (length - 1) // 2
    return pos - 1 - lower, pos + (length - 1 - lower)


def check_bed_interval(where, chrom, start, end, length):
    """Refuse a BED interval (0-based, half-open) that is not inside ``chrom`` of ``length`` bp, with
    one ``InputError`` line naming ``where``, the field and the value."""
    if start < 0:
        raise InputError(where, "start", start, "negative BED start (BED is 0-based: the first base is 0)")
    if end <= start:
        raise InputError(where, "end", end, f"BED end must be greater than start ({start})")
    if end > length:
        raise InputError(where, "end", end, f"beyond the end of {chrom} ({length} bp)")


def check_window(chrom, pos, lengths, length, source, chrom_field="chromosome", pos_field="position"):
    """InputError unless ``chrom`` is in the genome and the window centred on ``pos`` fits in it."""
    if chrom not in lengths:
        known = ", ".join(list(lengths)[:5]) + (", ..." if len(lengths) > 5 else "")
        raise InputError(source, chrom_field, chrom, f"chromosome not in the genome (it has {known})")
    start, end = window_bounds(pos, length)
    if pos < 1 or start < 0 or end > lengths[chrom]:
        lower = (length - 1) // 2
        raise InputError(source, pos_field, pos,
                         f"the {length} bp window around it leaves {chrom} (window centres must lie in "
                         f"{lower + 1}..{lengths[chrom] - (length - 1 - lower)} of 1..{lengths[chrom]})")


def split_of(chrom, validation_chroms, test_chroms):
    """The split a chromosome belongs to."""
    if chrom in test_chroms:
        return "test"
    if chrom in validation_chroms:
        return "validation"
    return "train"


def split_chromosomes(lengths, length, validation_chroms, test_chroms, chroms=(), source="genome.fasta"):
    """``{split: [chrom, ...]}`` of chromosomes that can hold a window of ``length``.

    ``chroms`` (optional) restricts the training chromosomes. Raises InputError when a held-out
    chromosome is absent or shorter than the window, or when a split has no usable chromosome.
    """
    for field, names in (("windows.validation_chroms", validation_chroms), ("windows.test_chroms", test_chroms),
                         ("windows.chroms", chroms)):
        for name in names:
            if name not in lengths:
                raise InputError(source, field, name, "chromosome not in the FASTA")
    overlap = set(validation_chroms) & set(test_chroms)
    if overlap:
        raise InputError("config", "windows.test_chroms", sorted(overlap)[0],
                         "also listed in windows.validation_chroms")
    out = {s: [] for s in SPLITS}
    for name, n in lengths.items():
        split = split_of(name, validation_chroms, test_chroms)
        if split == "train" and chroms and name not in chroms:
            continue
        if n < length:
            if split != "train":
                field = "windows.validation_chroms" if split == "validation" else "windows.test_chroms"
                raise InputError(source, field, name, f"chromosome is {n} bp, shorter than windows.length={length}")
            log.warning("skipping %s: %d bp is shorter than the window (%d bp)", name, n, length)
            continue
        out[split].append(name)
    return out


def no_chromosome_problem(split, lengths, length, validation_chroms, test_chroms, chroms=()):
    """Why ``split`` has no chromosome that can hold a window of ``length`` (its problem text)."""
    if split != "train":
        return f"windows.{split}_chroms is empty: no chromosome for this split"
    candidates = [n for n in lengths if split_of(n, validation_chroms, test_chroms) == "train"
                  and (not chroms or n in chroms)]
    if not candidates:
        if chroms:
            return "every chromosome of windows.chroms is held out (windows.validation_chroms, windows.test_chroms)"
        return (f"every chromosome of the FASTA ({len(lengths)}) is held out in windows.validation_chroms or "
                "windows.test_chroms: none is left for training")
    longest = max(candidates, key=lengths.get)
    return (f"no training chromosome of at least windows.length={length} bp (the longest, {longest}, has "
            f"{lengths[longest]} bp)")


def check_windows(lengths, length, counts, validation_chroms, test_chroms, chroms=(), regions="",
                  source="genome.fasta", min_train=0):
    """Check what the config and the chromosome lengths decide about the windows, before any is
    drawn: held-out chromosome sets (``split_chromosomes``), a chromosome for every split asked
    for, at least ``min_train`` training windows (``counts['train']``, or the regions on training
    chromosomes) and, with ``regions``, every interval of the file. Returns ``split_chromosomes``."""
    per_split = split_chromosomes(lengths, length, validation_chroms, test_chroms, chroms, source)
    if regions:
        centres = read_regions(regions, lengths, length)
        n_train = sum(split_of(c, validation_chroms, test_chroms) == "train" for c, _ in centres)
        if n_train < min_train:
            raise InputError(regions, "windows.regions", str(regions),
                             f"{n_train} regions on training chromosomes (not in windows.validation_chroms or "
                             f"windows.test_chroms): at least {min_train} needed")
        return per_split
    if counts.get("train", 0) < min_train:
        raise InputError("config", "windows.count.train", counts.get("train", 0),
                         f"at least {min_train} training window(s) needed: the Multiplexer trains on them")
    for split in SPLITS:
        if counts.get(split, 0) and not per_split[split]:
            raise InputError(source, f"windows.count.{split}", counts[split],
                             no_chromosome_problem(split, lengths, length, validation_chroms, test_chroms, chroms))
    return per_split


def _sample_split(fasta, split, chroms, lengths, count, length, max_n, rng, source):
    """``count`` windows ``(chrom, start, end)`` of one split by rejection sampling (``chroms``
    not empty: ``check_windows``)."""
    if count == 0:
        return []
    sizes = np.array([lengths[c] - length + 1 for c in chroms], dtype=np.float64)  # valid start positions
    prob = np.array([lengths[c] for c in chroms], dtype=np.float64)
    prob /= prob.sum()
    tries = np.zeros(len(chroms), dtype=np.int64)
    hits = np.zeros(len(chroms), dtype=np.int64)
    out = []
    budget = ATTEMPTS_PER_WINDOW * count + ATTEMPTS_BEFORE_GIVING_UP
    for _ in range(budget):
        i = int(rng.choice(len(chroms), p=prob))
        start = int(rng.integers(0, int(sizes[i])))
        seq = fasta[chroms[i]][start:start + length]
        tries[i] += 1
        if count_n(seq) <= max_n:
            hits[i] += 1
            out.append((chroms[i], start, start + length))
            if len(out) == count:
                return out
        elif hits[i] == 0 and tries[i] >= ATTEMPTS_BEFORE_GIVING_UP:
            raise InputError(source, "windows.max_n", max_n,
                             f"chromosome {chroms[i]} yielded no window with at most {max_n} N's in "
                             f"{tries[i]} draws (is it all N?)")
    raise InputError(source, f"windows.count.{split}", count,
                     f"only {len(out)} windows with at most {max_n} N's found in {budget} draws")


def read_regions(path, lengths, length, field="windows.regions"):
    """Window centres ``[(chrom, pos)]`` (1-based) from a BED file (centre of each interval) or a
    ``chrom<TAB>position`` file (1-based). Raises InputError (naming ``field`` for the file itself)
    on unknown chromosomes and on windows that would leave the chromosome."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, str(path), "regions file not found")
    centres = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.rstrip("\n").split("\t")
            where = f"{path}:{lineno}"
            try:
                if len(fields) >= 3:
                    s, e = int(fields[1]), int(fields[2])
                    pos = (s + e - 1) // 2 + 1
                elif len(fields) == 2:
                    pos = int(fields[1])
                else:
                    raise ValueError
            except ValueError:
                raise InputError(where, field, line.strip(), "expected chrom<TAB>position or BED") from None
            chrom = fields[0]
            if chrom not in lengths:
                raise InputError(where, "chrom", chrom, "chromosome not in the FASTA")
            if len(fields) >= 3:  # BED: 0-based half-open, the whole interval on the chromosome
                check_bed_interval(where, chrom, s, e, lengths[chrom])
            elif pos < 1:
                raise InputError(where, "position", pos, "positions are 1-based: the first base is 1")
            start, end = window_bounds(pos, length)
            if start < 0 or end > lengths[chrom]:
                raise InputError(where, "position", pos,
                                 f"a {length} bp window around it leaves {chrom} (1..{lengths[chrom]})")
            centres.append((chrom, pos))
    if not centres:
        raise InputError(path, field, str(path), "no regions in file")
    return centres


def sample_windows(fasta_path, length, max_n, counts, validation_chroms, test_chroms, seed,
                   chroms=(), regions=""):
    """Windows of every split, ids numbered train, then validation, then test.

    Random windows: a chromosome drawn with probability proportional to its length, a uniform
    start, rejected when it holds more than ``max_n`` N's. With ``regions``, windows are centred on
    the listed positions instead and assigned to splits by chromosome (``counts`` unused).
    """
    fasta = open_fasta(fasta_path)
    lengths = chromosome_lengths(fasta)
    per_split = check_windows(lengths, length, counts, validation_chroms, test_chroms, chroms, regions, fasta_path)
    drawn = {s: [] for s in SPLITS}
    if regions:
        for chrom, pos in read_regions(regions, lengths, length):
            start, end = window_bounds(pos, length)
            drawn[split_of(chrom, validation_chroms, test_chroms)].append((chrom, start, end))
    else:
        for k, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, 7, k])
            drawn[split] = _sample_split(fasta, split, per_split[split], lengths, counts[split], length, max_n,
                                         rng, fasta_path)
    windows = []
    for split in SPLITS:
        for chrom, start, end in drawn[split]:
            windows.append(Window(len(windows), split, chrom, start, end))
    log.info("sampled %s windows of %d bp", {s: len(drawn[s]) for s in SPLITS}, length)
    return windows


def write_windows(windows, path):
    """BED with columns chrom, start, end, window_id, split (atomic write)."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for w in windows:
            fh.write(f"{w.chrom}\t{w.start}\t{w.end}\t{w.window_id}\t{w.split}\n")


def read_windows(path):
    """Windows from a BED written by ``write_windows``."""
    out = []
    with open(path) as fh:
        for line in fh:
            chrom, start, end, wid, split = line.rstrip("\n").split("\t")
            out.append(Window(int(wid), split, chrom, int(start), int(end)))
    return out


def shard_windows(windows, shard, n_shards):
    """The windows of one shard: of each split, one contiguous block of its windows (in window id
    order), so that every shard holds about ``1 / n_shards`` of every split and each target job
    (one per shard of each split) has work when the split has at least ``n_shards`` windows."""
    out = []
    for split in SPLITS:
        members = sorted((w for w in windows if w.split == split), key=lambda w: w.window_id)
        out += [w for i, w in enumerate(members) if i * n_shards // len(members) == shard]
    return sorted(out, key=lambda w: w.window_id)


def sample_to_bed(fasta, out, length, max_n, counts, validation_chroms, test_chroms, seed, chroms=(), regions=""):
    """Stage: sample the windows of every split and write them as BED."""
    windows = sample_windows(fasta, length, max_n, counts, validation_chroms, test_chroms, seed, chroms, regions)
    write_windows(windows, out)
    return windows


def encode_windows(fasta, windows_bed, out):
    """Stage: tokens ``[N, L]`` uint8 of every window (row = window id) to a ``.npy`` file."""
    genome = open_fasta(fasta)
    windows = read_windows(windows_bed)
    length = windows[0].end - windows[0].start if windows else 0
    tokens = np.full((len(windows), length), N_TOKEN, dtype=np.uint8)
    for w in windows:
        tokens[w.window_id] = tokenize(genome[w.chrom][w.start:w.end])
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, tokens)
    return tokens


def padded_sequence(fasta, chrom, start, end, chrom_length):
    """Bases ``[start, end)`` of ``chrom`` as a string, N where the interval leaves the chromosome
    (before 0 or after ``chrom_length``), and whether it did."""
    lo, hi = max(start, 0), min(end, chrom_length)
    inner = fasta[chrom][lo:hi] if hi > lo else ""
    left = min(lo - start, end - start)
    right = end - start - left - len(inner)
    return "N" * left + inner + "N" * right, bool(left or right)
