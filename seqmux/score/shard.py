"""One shard of a scoring run: its share of the plan, window by window, to a shard table.

The plan is streamed (one row group at a time) and only this shard's rows are kept; the SNVs of a
tile arrive one after the other, are batched with those of the next tiles (``window_batch``
windows a Multiplexer pass) and each window's output is reduced to its kept values before the next
batch. Memory is one row group, one batch of windows and one buffer of output rows, whatever the
size of the input.

Output columns, sorted by ``row`` (the plan row): ``row``, ``record``, ``allele``, ``source`` (for the
gather), then the published columns (``seqmux.score.gather``): chrom, pos, id, ref, alt,
window_chrom, window_start, window_end, flags, max_abs_effect, top_feature and one float32 column
per output.
"""

import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..encoding import tokenize
from ..errors import InputError
from ..genome import chromosome_lengths, open_fasta
from ..ism import ModelOutputError
from ..outputs import atomic_path
from ..windows import padded_sequence
from .strand import BothStrands

log = logging.getLogger(__name__)

KEYS = ["row", "record", "allele", "source", "chrom", "pos", "id", "ref", "alt"]
FIXED = ["window_chrom", "window_start", "window_end", "flags", "max_abs_effect", "top_feature"]
WRITE_ROWS = 65536
INTS = {"row", "record", "pos", "window_start", "window_end"}
FLAGS = np.array(["", "n_padded", "flipped", "n_padded,flipped"], dtype=object)  # by padded + 2 flipped


def allele_windows(fasta, chrom, chrom_length, pos, genome_allele, new_allele, length):
    """Reference and alternative tokens ``[L]`` of a variant that replaces ``genome_allele`` (the
    FASTA's bases from 1-based ``pos``) by ``new_allele``, each window centred on its allele.

    The reference window is the L bases centred on ``genome_allele`` (``(L - 1) // 2`` bases before
    the centre of an allele of odd length, as for an SNV). The alternative window is the same
    arithmetic on the edited chromosome: centred on ``new_allele``, with the genome's bases before
    it and those after ``genome_allele`` after it, as many as fill L (more flanking bases for a
    deletion, fewer for an insertion; an allele longer than the window is cut at its edges). N
    beyond the chromosome ends. Returns ``(ref_tokens, alt_tokens, ref_window_start, padded)``.
    """
    p0, lower = pos - 1, (length - 1) // 2
    rs = p0 + (len(genome_allele) - 1) // 2 - lower
    ref_seq, padded = padded_sequence(fasta, chrom, rs, rs + length, chrom_length)
    a = p0 + (len(new_allele) - 1) // 2 - lower  # start of the alternative window, edited coordinates
    left, pad_left = padded_sequence(fasta, chrom, a, min(p0, a + length), chrom_length) if a < p0 else ("", False)
    mid = new_allele[max(0, a - p0):][:length - len(left)]
    g = p0 + len(genome_allele)
    right, pad_right = padded_sequence(fasta, chrom, g, g + length - len(left) - len(mid), chrom_length)
    return tokenize(ref_seq), tokenize(left + mid + right), rs, padded or pad_left or pad_right


def summary_index(names, features):
    """Indices of the outputs ``max_abs_effect``/``top_feature`` look at (all when ``features`` is empty)."""
    if not features:
        return np.arange(len(names))
    missing = [f for f in features if f not in names]
    if missing:
        raise InputError("config", "score.summary_features", missing[0], "not an output name of the model")
    return np.array([names.index(f) for f in features])


def pearson_sums(pred, exact):
    """``[6, F]`` float64 sums (w, wx, wy, wxx, wyy, wxy) of the weighted per-profile Pearson of
    ``seqmux.metrics`` (``w = |exact|``) over one ``[F, 4, L]`` map pair; they add across windows."""
    x = np.asarray(pred, np.float64).reshape(len(pred), -1)
    y = np.asarray(exact, np.float64).reshape(len(exact), -1)
    w = np.abs(y)
    return np.stack([w.sum(1), (w * x).sum(1), (w * y).sum(1), (w * x * x).sum(1), (w * y * y).sum(1),
                     (w * x * y).sum(1)])


class ShardScorer:
    """Scores plan rows of one shard and writes them (see the module docstring)."""

    def __init__(self, fasta, scorer, names, length, out_path, summary_features=(), check_windows=(),
                 exact_scorer=None, window_batch=8, batch_size=256):
        self.fasta, self.lengths = fasta, chromosome_lengths(fasta)
        self.scorer, self.names, self.length = scorer, list(names), length
        self.summary = summary_index(self.names, list(summary_features))
        self.check = {tuple(k) for k in check_windows}
        self.exact = exact_scorer
        self.window_batch, self.batch_size = max(1, window_batch), batch_size
        self.summary_names = np.array(self.names, dtype=object)[self.summary]
        self.schema = pa.schema([(k, pa.int16() if k == "allele" else pa.int64() if k in INTS else pa.string())
                                 for k in KEYS + FIXED[:3]] + [("flags", pa.string()),
                                                               ("max_abs_effect", pa.float32()),
                                                               ("top_feature", pa.string())]
                                + [(n, pa.float32()) for n in self.names])
        self.writer = pq.ParquetWriter(str(out_path), self.schema)
        self.buffer, self.buffered = [], 0
        self.stats = dict(rows=0, windows=0, n_padded=0, flipped=0, checked_windows=0)
        self.sums = np.zeros((6, len(self.names)))

    # --- SNVs by tile
    def tile_tokens(self, keys):
        """``[(tokens [L], padded)]`` of tiles ``(fasta_chrom, start)``: a run of tiles of one chromosome
        with increasing starts less than a window apart is read from the FASTA and tokenised once."""
        out, i = [], 0
        while i < len(keys):
            chrom, lo = keys[i]
            j = i + 1
            while j < len(keys) and keys[j][0] == chrom and 0 <= keys[j][1] - keys[j - 1][1] < self.length:
                j += 1
            n = self.lengths[chrom]
            span = tokenize(padded_sequence(self.fasta, chrom, lo, keys[j - 1][1] + self.length, n)[0])
            out += [(span[start - lo:start - lo + self.length], start < 0 or start + self.length > n)
                    for _, start in keys[i:j]]
            i = j
        return out

    def tiles(self, groups):
        """Score ``[(key, rows)]``: each key a tile ``(fasta_chrom, start)``, rows a plan table."""
        keys = [key for key, _ in groups]
        windows = self.tile_tokens(keys)
        items = [(tokens, rows["pos"].to_numpy() - 1 - start, rows["subst"].to_numpy().astype(np.int64))
                 for ((_, start), rows), (tokens, _) in zip(groups, windows)]
        effects = self.scorer.windows(items)
        self.stats["windows"] += len(items)
        counts = [rows.num_rows for _, rows in groups]
        self.emit(pa.concat_tables([rows for _, rows in groups]), np.concatenate(effects),
                  np.repeat([start for _, start in keys], counts), np.repeat([p for _, p in windows], counts))
        for key, (tokens, _) in zip(keys, windows):
            if key in self.check and self.exact is not None:
                self.check.discard(key)
                self.sums += pearson_sums(self.scorer.full_map(tokens), self.exact.full_map(tokens))
                self.stats["checked_windows"] += 1

    # --- indels and MNVs: a pair of windows each
    def indels(self, rows):
        refs, alts, starts, padded = [], [], [], []
        for r in rows.to_pylist():
            genome_allele, new = (r["alt"], r["ref"]) if r["flipped"] else (r["ref"], r["alt"])
            rt, at, rs, pad = allele_windows(self.fasta, r["fasta_chrom"], self.lengths[r["fasta_chrom"]], r["pos"],
                                             genome_allele.upper(), new.upper(), self.length)
            refs.append(rt), alts.append(at), starts.append(rs), padded.append(pad)
        values = self.scorer.pairs(np.stack(refs), np.stack(alts))
        self.stats["windows"] += 2 * len(refs)
        self.emit(rows, values, np.array(starts), np.array(padded))

    def emit(self, rows, values, starts, padded):
        """Output rows of plan rows ``rows`` with effects ``values [M, F]``, their windows' ``starts``
        and N-padding ``padded`` (each ``[M]``), built column by column; buffered until ``flush``."""
        values = np.asarray(values, np.float32)
        flipped = rows["flipped"].to_numpy(zero_copy_only=False)
        padded = np.asarray(padded, bool)
        values = np.where(flipped[:, None], -values, values).astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ModelOutputError("an effect is not finite")
        summary = np.abs(values[:, self.summary])
        best = summary.argmax(1)
        self.stats["n_padded"] += int(np.sum(padded))
        self.stats["flipped"] += int(np.sum(flipped))
        columns = {k: rows[k] for k in KEYS}
        columns.update(window_chrom=rows["fasta_chrom"], window_start=pa.array(starts, pa.int64()),
                       window_end=pa.array(np.asarray(starts) + self.length, pa.int64()),
                       flags=pa.array(FLAGS[padded + 2 * flipped], pa.string()),
                       max_abs_effect=pa.array(summary[np.arange(len(best)), best], pa.float32()),
                       top_feature=pa.array(self.summary_names[best], pa.string()))
        for name, column in zip(self.names, np.ascontiguousarray(values.T)):
            columns[name] = pa.array(column, pa.float32())
        self.buffer.append(pa.table(columns, schema=self.schema))
        self.buffered += rows.num_rows
        self.stats["rows"] += rows.num_rows

    def flush(self, before=None):
        """Write the buffered rows in plan order: all of them, or (``before``: the first plan row not
        yet scored) those before it once ``WRITE_ROWS`` are buffered. Rows come out sorted by plan
        row, so the gather merges the shards without holding them."""
        if not self.buffer or (before is not None and self.buffered < WRITE_ROWS):
            return
        table = pa.concat_tables(self.buffer)
        table = table.take(pc.sort_indices(table["row"]))
        n = table.num_rows if before is None else int(np.searchsorted(table["row"].to_numpy(), before))
        if n:
            self.writer.write_table(table.slice(0, n))
        rest = table.slice(n)
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self):
        self.flush()
        self.writer.close()


def score_plan_rows(plan_path, shard, shard_scorer, rows_per_batch=65536):
    """Stream the plan, score this shard's rows (see the module docstring). SNVs are scored a batch
    of tiles at a time, indels ``batch_size`` at a time (earlier when older rows wait on them), and
    the output is written in plan order."""
    groups, indels, offset = [], [], 0

    def first_pending():
        firsts = [t["row"][0].as_py() for t in ([groups[0][1]] if groups else []) + indels[:1]]
        return min(firsts) if firsts else np.iinfo(np.int64).max

    def score_indels():
        shard_scorer.indels(pa.concat_tables(indels))
        indels.clear()

    for batch in pq.ParquetFile(str(plan_path)).iter_batches(batch_size=rows_per_batch):
        table = pa.Table.from_batches([batch])
        table = table.append_column("row", pa.array(np.arange(offset, offset + table.num_rows), pa.int64()))
        offset += table.num_rows
        table = table.filter(pc.and_(pc.equal(table["shard"], shard), pc.equal(table["reason"], "")))
        if not table.num_rows:
            continue
        snv = table.filter(pc.equal(table["kind"], "snv"))
        indel = table.filter(pc.equal(table["kind"], "indel"))
        if indel.num_rows:
            indels.append(indel)
            if sum(t.num_rows for t in indels) >= shard_scorer.batch_size:
                score_indels()
        if snv.num_rows:
            chroms = np.asarray(snv["fasta_chrom"].to_pylist(), dtype=object)
            starts = snv["window_start"].to_numpy()
            change = np.r_[True, (chroms[1:] != chroms[:-1]) | (starts[1:] != starts[:-1])]
            bounds = np.r_[np.flatnonzero(change), len(starts)]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                key, rows = (chroms[lo], int(starts[lo])), snv.slice(lo, hi - lo)
                if groups and groups[-1][0] == key:
                    groups[-1] = (key, pa.concat_tables([groups[-1][1], rows]))
                else:
                    groups.append((key, rows))
            while len(groups) > shard_scorer.window_batch:  # the last tile may go on in the next batch
                shard_scorer.tiles(groups[:shard_scorer.window_batch])
                del groups[:shard_scorer.window_batch]
        shard_scorer.flush(first_pending())
        if shard_scorer.buffered >= WRITE_ROWS and indels:  # an early indel holds back the rows after it
            score_indels()
            shard_scorer.flush(first_pending())
    if groups:
        shard_scorer.tiles(groups)
    if indels:
        score_indels()


def load_scorers(engine, strand, base_model, model_path, length, mode, device, batch_size, window_batch,
                 need_exact=False):
    """``(scorer, names, exact_scorer_or_None)`` of the config's engine (``seqmux.score.engine``),
    wrapped for ``strand``; InputError (naming the model file) for a Multiplexer of another window
    length, target mode or base model's outputs than the config's."""
    from ..ism import model_source
    from ..models import build_base_model, count_outputs, output_names
    from .engine import ExactScorer, MultiplexerScorer

    def wrap(s):
        return BothStrands(s) if strand == "both" else s

    exact, base_names = None, None
    if engine == "exact" or need_exact:
        model = build_base_model(base_model["kind"], base_model.get("weights", ""), base_model.get("module", ""),
                                 base_model.get("class", ""), length,
                                 output=base_model.get("output"))
        try:
            n_outputs = count_outputs(model, length)
        except InputError:
            raise
        except Exception as err:
            raise InputError(*model_source(base_model), f"the model fails on a {length} bp window: "
                             f"{type(err).__name__}: {err}".splitlines()[0]) from None
        base_names = output_names(base_model["kind"], base_model.get("names", ""), n_outputs)
        exact = wrap(ExactScorer(model, mode, batch_size, device, model_source(base_model)))
    if engine == "exact":
        return exact, base_names, None
    from ..multiplexer import load_multiplexer

    mux, info = load_multiplexer(model_path)
    if int(info["length"]) != length:
        raise InputError(model_path, "score.model", str(model_path),
                         f"the Multiplexer takes {info['length']} bp windows, not windows.length={length}")
    if info["mode"] != mode:
        raise InputError(model_path, "score.model", str(model_path),
                         f"the Multiplexer predicts {info['mode']} effects, not targets.mode={mode}")
    if base_names is not None and list(info["output_names"]) != list(base_names):
        raise InputError(model_path, "score.model", str(model_path),
                         f"the Multiplexer was trained for another base model's outputs ({len(info['output_names'])}"
                         f" outputs, first {info['output_names'][:2]}; the base model has {len(base_names)}, first "
                         f"{base_names[:2]})")
    return wrap(MultiplexerScorer(mux, device, window_batch)), list(info["output_names"]), exact


def run_shard(genome, plan_path, plan_info, out_table, out_info, shard, engine="multiplexer", strand="forward",
              base_model=None, model_path="", mode="logfold", summary_features=(), device="auto", batch_size=256,
              window_batch=8):
    """Stage: score one shard of the plan (``out_table`` parquet, ``out_info`` JSON of counts,
    timing and the accuracy sums)."""
    from ..runtime import choose_device

    info = json.loads(open(plan_info).read())
    length = int(info["length"])
    dev = choose_device(device, "config", "score.device")
    need_exact = engine == "multiplexer" and bool(info["accuracy_windows"])
    scorer, names, exact = load_scorers(engine, strand, base_model, model_path, length, mode, dev, batch_size,
                                        window_batch, need_exact)
    source = (model_path or base_model.get("weights", ""), "score.engine", engine)
    stats = write_shard(genome, plan_path, info, out_table, out_info, shard, scorer, names, exact, summary_features,
                        window_batch, batch_size, source, mode)
    log.info("shard %d: %d rows from %d windows in %.1f s (%s engine, strand %s, %s)", shard, stats["rows"],
             stats["windows"], stats["seconds"], engine, strand, dev)
    return stats


def write_shard(genome, plan_path, info, out_table, out_info, shard, scorer, names, exact, summary_features,
                window_batch, batch_size, source, mode):
    """Score one shard with ready scorers (the stage and ``seqmux score``); ``source``: ``(file,
    field, value)`` naming the model in an error."""
    fasta = open_fasta(genome)
    started = time.perf_counter()
    with atomic_path(out_table) as tmp:
        shard_scorer = ShardScorer(fasta, scorer, names, int(info["length"]), tmp, summary_features,
                                   info["accuracy_windows"], exact, window_batch, batch_size)
        try:
            score_plan_rows(plan_path, shard, shard_scorer)
        except ModelOutputError as err:
            raise InputError(*source, f"{err} (mode {mode})") from None
        finally:
            shard_scorer.close()
        stats = dict(shard_scorer.stats, seconds=time.perf_counter() - started, shard=shard, names=names,
                     accuracy_sums=shard_scorer.sums.tolist())
        with atomic_path(out_info) as tmp_info:
            with open(tmp_info, "w") as fh:
                fh.write(json.dumps(stats) + "\n")
    return stats
