"""Corpus builder: generate -> trace -> filter -> dedup -> split -> Hub-layout dataset
(paper Sec. 2.2, 3.2, App. C.4, C.5).

A build writes ``<out>/<config>/<split>-NNNNN-of-NNNNN.parquet`` plus a ``README.md`` dataset
card whose ``configs:`` YAML makes ``datasets.load_dataset(out, config, split=...)`` work
offline exactly as it will from the Hub, and a tokenized stream per split for the trainer
(``<out>/<config>/tokens/<split>.bin``, uint8 token ids, with ``<split>.idx.npy`` holding the
start offset of every example).

Guarantees: one global SHA-256 hash set over the raw snippets, applied before splitting, so no
snippet appears twice anywhere (C.4); test and validation examples pass the determinism filter
(every two consecutive steps fit in the context window, Sec. 2.2); output depends only on the
config and the seed, not on the number of workers (chunk ``i`` always uses the same random
stream and chunks are consumed in order); a build is written to a hidden temporary folder and
renamed into place when complete, so an interrupted build never looks complete.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tinytrace import __version__
from tinytrace.lang.config import GeneratorConfig, get_preset
from tinytrace.lang.generator import Generator, default_fast_path
from tinytrace.lang.program import ASSIGN, Line
from tinytrace.lang.tracer import Rejected, max_step_pair_tokens, pack_example, run, state_text, unpack_examples

SPLITS = ("train", "validation", "test")
_TOKENS_DIR = "tokens"


def _schemas():
    import pyarrow as pa

    data = pa.schema(
        [
            ("code", pa.string()),
            ("trace", pa.string()),
            ("n_statements", pa.int16()),
            ("max_depth", pa.int8()),
            ("n_steps", pa.int32()),
            ("n_tokens", pa.int32()),
            ("max_step_pair_tokens", pa.int32()),
            ("operand_pairs", pa.list_(pa.string())),
            ("executed_operand_pairs", pa.list_(pa.string())),
            ("sha256", pa.string()),
        ]
    )
    chunk = data.append(pa.field("tokens", pa.binary())).append(pa.field("deterministic", pa.bool_()))
    return data, chunk


def _pair(u: str, v: str) -> str:
    return u + v if u <= v else v + u


def operand_pairs(lines: list[Line], only: set[int] | None = None) -> list[str]:
    """Unordered operand pairs of ``x = u op v`` assignments with two variables (Sec. 4.2), in
    line order; with ``only``, just the lines whose index is in it."""
    return [
        _pair(ln.a, ln.b)
        for i, ln in enumerate(lines)
        if ln.kind == ASSIGN
        and ln.op is not None
        and ln.a.__class__ is str
        and ln.b.__class__ is str
        and (only is None or i in only)
    ]


def cooccurring_pairs(lines: list[Line]) -> list[str]:
    """Every unordered pair of variable occurrences inside one statement (Sec. 4.2.1)."""
    out = set()
    for ln in lines:
        vs = ln.variables()
        for i in range(len(vs)):
            for j in range(i + 1, len(vs)):
                out.add(_pair(vs[i], vs[j]))
    return sorted(out)


class Pipeline:
    """Generate snippets, trace them, apply the runtime and pair filters, format them."""

    def __init__(self, config: GeneratorConfig, context: int = 512, rules=None):
        self.config = config
        self.context = context
        # rules=None: the default rules' fast path, which executes each snippet as it writes
        # it; DefaultRules(config) gives the same records through the context-stack generator
        # and the general tracer (slower)
        self.generator = Generator(config, rules)
        self.fast = default_fast_path(config, run=True) if rules is None else None
        # the multi-character lexemes a fast-path snippet may hold (for the packed text)
        self.lexemes = [w for w in ["if", *config.arith_ops, *config.comparisons] if len(w) > 1]
        self.forbidden = config.forbidden_pair_set() if config.require_forbidden_pair else None

    def sample(self, rng: random.Random, stats: Counter) -> dict | None:
        """One attempt: a record, or None (the reason counted in ``stats``)."""
        cols = self._columns(self._packed(rng, stats, 1, 1))
        return {k: v[0] for k, v in cols.items()} if cols["code"] else None

    def records(self, rng: random.Random, n: int, stats: Counter) -> dict[str, list]:
        """``n`` accepted records as columns (the corpus builder's chunks): the attempts of
        :meth:`sample`, whose texts and tokens are then made in one pass for all."""
        # no record holds a reference cycle: the collector's passes over the chunk's young
        # objects would be pure cost (~3%)
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._columns(self._packed(rng, stats, n, math.inf))
        finally:
            if collecting:
                gc.enable()

    def _packed(self, rng, stats: Counter, n: int, max_attempts) -> list[tuple]:
        """Attempts until ``n`` are accepted or ``max_attempts`` were made (the rejection
        reasons counted in ``stats``); the accepted ones as ``(n_statements, max_depth,
        n_steps, pairs, executed_pairs, packed, part_lengths)``."""
        traced = self.fast or self._traced
        forbidden = self.forbidden
        out = []
        k = 0
        while len(out) < n and k < max_attempts:
            k += 1
            rows, steps, final, reason, pairs, executed, depth = traced(rng, 100_000, stats)
            if reason is not None:
                stats[reason] += 1
            elif forbidden is not None and not any(p in forbidden for p in executed):
                stats["no_forbidden_pair"] += 1
            else:
                out.append((len(rows), depth, len(steps), pairs, executed)
                           + pack_example(rows, steps, final))
        stats["attempts"] += k
        return out

    def _traced(self, rng, max_tries, stats):
        """The fast path's ``run=True`` result through the rules' generator and the general
        tracer (any rules, loops included)."""
        c = self.config
        lines = self.generator.generate(rng, max_tries, stats)
        rows = [ln.row() for ln in lines]
        try:
            ex = run(lines, c.value_range, c.max_loop_iterations)
        except Rejected as r:
            return rows, None, None, r.reason, None, None, None
        ran = {i for i, _ in ex.steps}
        steps = [(i, state_text(state)) for i, state in ex.steps]
        return (rows, steps, state_text(ex.final), None, operand_pairs(lines),
                operand_pairs(lines, ran), max(ln.indent for ln in lines))

    def _columns(self, packed: list[tuple]) -> dict[str, list]:
        n_statements, depth, n_steps, pairs, executed, examples, parts = (
            zip(*packed) if packed else [()] * 7)
        n_tokens = [sum(p) for p in parts]
        codes, texts, tokens = unpack_examples(
            examples, n_tokens, self.lexemes if self.fast is not None else None)
        pair_tokens = list(map(max_step_pair_tokens, parts))  # determinism filter, C.5
        sha256, context = hashlib.sha256, self.context
        return {
            "code": codes,
            "trace": texts,
            "n_statements": list(n_statements),
            "max_depth": list(depth),
            "n_steps": list(n_steps),
            "n_tokens": n_tokens,
            "max_step_pair_tokens": pair_tokens,
            "operand_pairs": list(pairs),
            "executed_operand_pairs": list(executed),
            "sha256": [sha256(c.encode()).hexdigest() for c in codes],
            "tokens": tokens,
            "deterministic": [t <= context for t in pair_tokens],
        }


def chunk_rng(seed: int, chunk: int) -> random.Random:
    # string seeds are hashed with SHA-512: the stream is the same on every Python version
    return random.Random(f"tinytrace/{seed}/{chunk}")


def _make_chunk(args):
    """Worker: ``size`` accepted records of chunk ``chunk`` as an Arrow table (+ stats)."""
    import pyarrow as pa

    config_dict, context, seed, chunk, size = args
    pipe = _worker_pipeline(config_dict, context)
    rng = chunk_rng(seed, chunk)
    stats: Counter = Counter()
    cols = pipe.records(rng, size, stats)
    return pa.table(cols, schema=_schemas()[1]), dict(stats)


_PIPE_CACHE: dict = {}


def _worker_pipeline(config_dict: dict, context: int) -> Pipeline:
    key = (json.dumps(config_dict, sort_keys=True), context)
    pipe = _PIPE_CACHE.get(key)
    if pipe is None:
        _PIPE_CACHE.clear()
        pipe = _PIPE_CACHE[key] = Pipeline(GeneratorConfig.from_dict(config_dict), context)
    return pipe


@dataclass
class BuildConfig:
    """What ``tinytrace data build`` makes. ``num_snippets`` counts all splits together."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    num_snippets: int = 10_000
    seed: int = 0
    test_size: int = 1024
    validation_size: int = 1024
    context: int = 512
    deterministic_train: bool = False  # the determinism filter on train too (C.5: optional)
    config_name: str | None = None  # defaults to the generator preset's name
    chunk_size: int = 1024
    shard_rows: int = 250_000
    tokens: bool = True  # also write the uint8 token stream of each split

    def __post_init__(self):
        if self.num_snippets < 0 or self.test_size < 0 or self.validation_size < 0:
            raise ValueError("sizes must be >= 0")
        if self.test_size + self.validation_size > self.num_snippets:
            raise ValueError(
                f"test ({self.test_size}) + validation ({self.validation_size}) exceed "
                f"--num-snippets ({self.num_snippets})"
            )
        if self.context < 16:
            raise ValueError(f"context must be >= 16 tokens, got {self.context}")
        if self.chunk_size < 1 or self.shard_rows < 1:
            raise ValueError("chunk_size and shard_rows must be >= 1")
        name = self.config_name or self.generator.name
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad config name {name!r}")
        self.config_name = name

    @property
    def split_sizes(self) -> dict[str, int]:
        return {
            "test": self.test_size,
            "validation": self.validation_size,
            "train": self.num_snippets - self.test_size - self.validation_size,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generator"] = self.generator.to_dict()
        return d


class _ShardWriter:
    """Streams one split's rows into ``<split>-NNNNN-of-NNNNN.parquet`` shards and tokens."""

    def __init__(self, folder: Path, split: str, total: int, shard_rows: int, tokens: bool):
        self.folder, self.split, self.total = folder, split, total
        self.shard_rows = shard_rows
        self.n_shards = max(1, math.ceil(total / shard_rows))
        self.schema = _schemas()[0]
        self.written = 0
        self.writer = None
        self.tok_file = None
        self.lengths: list = []
        if tokens and total:
            (folder / _TOKENS_DIR).mkdir(exist_ok=True)
            self.tok_file = open(folder / _TOKENS_DIR / f"{split}.bin", "wb")

    def add(self, table) -> None:
        """Append rows (an Arrow table with the chunk schema)."""
        import pyarrow.parquet as pq

        if self.tok_file is not None:
            toks = table.column("tokens").combine_chunks()
            _, off_buf, data = toks.buffers()
            off = np.frombuffer(off_buf, dtype=np.int32)[toks.offset : toks.offset + len(toks) + 1]
            self.tok_file.write(memoryview(data)[off[0] : off[-1]])
            self.lengths.append(np.diff(off))
        table = table.select(self.schema.names)
        while table.num_rows:
            shard = self.written // self.shard_rows
            room = (shard + 1) * self.shard_rows - self.written
            part, table = table.slice(0, room), table.slice(room)
            if self.writer is None:
                name = f"{self.split}-{shard:05d}-of-{self.n_shards:05d}.parquet"
                self.writer = pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")
            self.writer.write_table(part, row_group_size=8192)
            self.written += part.num_rows
            if self.written % self.shard_rows == 0:
                self.writer.close()
                self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tok_file is not None:
            self.tok_file.close()
            lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            np.save(self.folder / _TOKENS_DIR / f"{self.split}.idx.npy", starts)


def build(cfg: BuildConfig, out: str | os.PathLike, workers: int | None = None,
          progress: bool = True, release: dict | None = None) -> dict:
    """Build one config of a dataset into ``out`` (other configs there are kept) and
    regenerate the dataset card. Returns the build summary (also in ``build.json``).
    ``release`` (what the card says about a shipped set, see :func:`build_release`) is stored
    in ``build.json`` as is."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.config_name
    final = out / name
    tmp = out / f".{name}.incomplete"
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous build was interrupted: start it again
    tmp.mkdir()
    workers = max(1, workers or os.cpu_count() or 1)
    sizes = cfg.split_sizes
    writers = {
        s: _ShardWriter(tmp, s, sizes[s], cfg.shard_rows, cfg.tokens) for s in SPLITS if sizes[s]
    }
    filled = {s: 0 for s in SPLITS}
    seen: set[bytes] = set()
    stats: Counter = Counter()
    t0 = time.time()
    total = cfg.num_snippets
    gen_dict = cfg.generator.to_dict()
    tasks = ((gen_dict, cfg.context, cfg.seed, i, cfg.chunk_size) for i in _count())
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    bar = tqdm(total=total, desc=f"build {name}", unit="snippet", disable=not progress)
    try:
        results = pool.imap(_make_chunk, tasks, chunksize=1) if pool else map(_make_chunk, tasks)
        done = total == 0
        n_done = 0
        while not done:
            table, chunk_stats = next(results)
            stats.update(chunk_stats)
            picks: dict[str, list[int]] = {s: [] for s in SPLITS}
            hashes = table.column("sha256").to_pylist()
            dets = table.column("deterministic").to_pylist()
            for i, (h, det) in enumerate(zip(hashes, dets)):
                h = bytes.fromhex(h)
                if h in seen:
                    stats["duplicate"] += 1
                    continue
                seen.add(h)
                split = _assign(det, filled, sizes, cfg.deterministic_train)
                if split is None:
                    stats["nondeterministic"] += 1
                    continue
                picks[split].append(i)
                filled[split] += 1
                n_done += 1
                if n_done == total:
                    done = True
                    break
            for split, idx in picks.items():
                if idx:
                    writers[split].add(table.take(idx))
                    bar.update(len(idx))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    for w in writers.values():
        w.close()
    unique = len(seen)
    seen.clear()
    seconds = time.time() - t0
    # build.json depends only on the config and seed (a rebuild leaves `git diff` empty);
    # timings go to timing.json
    summary = {
        "config_name": name,
        "build": cfg.to_dict(),
        "splits": dict(filled),
        "stats": _stats_summary(stats, seen_count=unique),
        "tokens": _token_summary(tmp, filled),
        "tinytrace_version": __version__,
    }
    if release is not None:
        summary["release"] = release
    timing = {
        "seconds": round(seconds, 2),
        "workers": workers,
        "snippets_per_s": round(total / seconds, 1) if seconds else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (tmp / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    (tmp / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    summary.update(timing)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_card(out)
    return summary


def _count():
    i = 0
    while True:
        yield i
        i += 1


def _assign(det: bool, filled: dict, sizes: dict, deterministic_train: bool) -> str | None:
    """Test first, then validation, then train (C.4: dedup happens before splitting)."""
    for split in ("test", "validation"):
        if filled[split] < sizes[split] and det:
            return split
    if filled["train"] < sizes["train"] and (det or not deterministic_train):
        return "train"
    return None


def _stats_summary(stats: Counter, seen_count: int) -> dict:
    attempts = stats.get("attempts", 0)
    keys = ("generator", "value_range", "loop_cap", "exception", "no_forbidden_pair",
            "duplicate", "nondeterministic")
    return {"attempts": attempts, "unique": seen_count, **{k: stats.get(k, 0) for k in keys}}


def _token_summary(folder: Path, filled: dict) -> dict:
    import pyarrow.parquet as pq

    out = {}
    for split, n in filled.items():
        if not n:
            continue
        files = sorted(folder.glob(f"{split}-*.parquet"))
        tot = sum(pq.read_table(f, columns=["n_tokens"])["n_tokens"].to_numpy().sum() for f in files)
        out[split] = {"examples": n, "tokens": int(tot), "mean_tokens": round(float(tot) / n, 2)}
    return out


# --- dataset card ------------------------------------------------------------------------------
def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _card_order(b: dict) -> tuple:
    rel = b.get("release")
    if rel is not None:
        return (0, rel["order"], [])
    return (1, b["config_name"] != "base", _natural(b["config_name"]))


def _generator_short(g: dict) -> str:
    depth = (f"{g['min_depth']}" if g["min_depth"] == g["max_depth"]
             else f"{g['min_depth']}-{g['max_depth']}")
    s = f"{g['min_statements']}-{g['max_statements']} statements, depth {depth}"
    k = len(g["forbidden_pairs"])
    if k and g["require_forbidden_pair"]:
        s += f", executes 1 of {k} excluded pairs"
    elif k:
        s += f", {k} pairs excluded ({g['exclusion_scope']})"
    return s


def write_card(out: str | os.PathLike, pretty_name: str = "TinyTracing") -> Path:
    """(Re)write ``<out>/README.md`` from the ``build.json`` of every config present."""
    out = Path(out)
    builds = [json.loads(f.read_text()) for f in out.glob("*/build.json")]
    builds.sort(key=_card_order)
    released = [b for b in builds if "release" in b]
    yaml = ["---", f"pretty_name: {pretty_name}", "license: mit", "language:", "- code",
            "task_categories:", "- text-generation", "tags:", "- code-execution", "- synthetic",
            "configs:"]
    for i, b in enumerate(builds):
        yaml.append(f"- config_name: {b['config_name']}")
        if i == 0:
            yaml.append("  default: true")
        yaml.append("  data_files:")
        for split in SPLITS:
            if b["splits"].get(split):
                yaml += [f"  - split: {split}", f"    path: {b['config_name']}/{split}-*"]
    yaml.append("---")
    first = builds[0]["config_name"] if builds else "base"
    listed = ", ".join(f"`{b['config_name']}`" for b in builds)
    # only the splits some config has: test-only releases get no empty train/validation columns
    splits = [x for x in SPLITS if any(b["splits"].get(x) for b in builds)] or ["test"]
    body = [
        f"# {pretty_name}",
        "",
        "Synthetic Python snippets and their step-by-step execution traces, from the",
        "TinyTrace-Generator of *A Minimalist Approach for Exploring Transformer Robustness to",
        "In-Distribution and Out-of-Distribution Samples* (the TinyTracing paper), rebuilt by the",
        "`tinytrace` companion package.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import get_dataset_config_names, load_dataset",
        f'ds = load_dataset("<this folder or org/name>", "{first}", split="test")',
        "print(ds[0][\"trace\"])",
        'print(get_dataset_config_names("<this folder or org/name>"))  # every config below',
        "```",
        "",
        f"Configs: {listed or 'none yet'}.",
        "",
        "## Fields",
        "",
        "| field | meaning |",
        "|---|---|",
        "| `code` | the snippet (one tab per nesting level) |",
        "| `trace` | the whole example: the snippet, one `#STEP` block per executed line, the final `@^$` block |",
        "| `n_statements` | lines (assignments and `if` headers) |",
        "| `max_depth` | deepest nesting level (an `if` inside an `if` has depth 2) |",
        "| `n_steps` | executed lines |",
        "| `n_tokens` | tokens with the 77-token vocabulary, end-of-example token included |",
        "| `max_step_pair_tokens` | longest two consecutive step blocks, in tokens (determinism filter) |",
        "| `operand_pairs` / `executed_operand_pairs` | unordered variable pairs of `x = u op v` assignments (all / executed) |",
        "| `sha256` | SHA-256 of `code`, the deduplication key |",
        "",
        "## Configs",
        "",
        "| config | " + " | ".join(splits) + " | mean tokens | seed | generator | used by |",
        "|---|" + "---|" * (len(splits) + 4),
    ]
    for b in builds:
        s = b["splits"]
        mean = next(iter(b.get("tokens", {}).values()), {}).get("mean_tokens", "")
        g = b["build"]["generator"]
        body.append(
            f"| `{b['config_name']}` | " + " | ".join(str(s.get(x, 0)) for x in splits)
            + f" | {mean} | {b['build']['seed']} | `{g['name']}`: "
            f"{_generator_short(g)} | {b.get('release', {}).get('used_by', '')} |"
        )
    if released:
        seeds = sorted({b["build"]["seed"] for b in released})
        body += [
            "",
            "## How the test sets were made",
            "",
            "Each config with a *used by* entry is the test set that the companion's experiments",
            "(`tinytrace.experiments`) evaluate at the `gpu` and `paper` scales with experiment",
            f"seed {seeds[0]}: the same generator config, {released[0]['splits']['test']} snippets, "
            f"a determinism-filter window of {released[0]['build']['context']} tokens and",
            f"chunks of {released[0]['build']['chunk_size']} snippets. The list of them is "
            "`tinytrace.data.release_sets()`; rebuild them all, byte",
            "for byte, with `tinytrace data release --out <folder>` (one with `--only NAME`) and",
            "push them with `tinytrace data push <folder> --repo-id ORG/tinytracing`. The `smoke`",
            "and `cpu` scales evaluate a scaled-down task instead (smaller sets, fewer variables",
            "and statements, values in [-9, 9]); they build those sets in their cache.",
            "",
            "- *Test split of a training corpus* (seed = experiment seed): `tinytrace data build`",
            "  fills the test split first, from the start of the seeded stream, then validation and",
            "  train, so the test split of the training corpus is these snippets whatever the",
            "  corpus size, and no training snippet is one of them (one hash set over all splits).",
            "- *Stand-alone test set* (seed = experiment seed + 1000): built like a test-only corpus.",
            "  It differs from the training distributions by construction (more statements, deeper",
            "  nesting, or an executed assignment on a pair that the training corpus never has as",
            "  operands). The depth-6 and depth-7 sets are not hash-checked against the",
            "  curriculum's injected depth-6/7 training snippets (same generator, experiment seed),",
            "  which the runs with p > 0 train on.",
        ]
    body += ["", "## Creation", ""]
    for b in builds:
        st = b["stats"]
        g = b["build"]["generator"]
        rel = b.get("release")
        body += [f"### `{b['config_name']}`", ""]
        if rel is not None:
            kind = (f"the test split of {rel['split_of']}" if rel["split_of"]
                    else "a stand-alone test set")
            body += [f"- used by: {rel['used_by']}; {kind}"]
            if rel["made"]:
                body += [f"- made: {rel['made']}"]
            body += [f"- command: `{rel['command']}`"]
        body += [
            f"- generator `{g['name']}`: {g['min_statements']}-{g['max_statements']} statements, depth "
            f"{g['min_depth']}-{g['max_depth']}, variables `{g['variables'][0]}-{g['variables'][-1]}`"
            f" ({len(g['variables'])}), ops `{' '.join(g['arith_ops'])}`, comparisons "
            f"`{' '.join(g['comparisons'])}`, literals and values in {g['value_range']}",
            (f"- forbidden pairs: {len(g['forbidden_pairs'])}, every example executes an "
             "assignment on one (the generator draws freely, the pipeline keeps those snippets)"
             if g["require_forbidden_pair"] else
             f"- forbidden pairs: {len(g['forbidden_pairs'])} ({g['exclusion_scope']} scope)"),
            f"- seed {b['build']['seed']}, determinism-filter window {b['build']['context']} "
            f"tokens, built by tinytrace {b['tinytrace_version']}",
            f"- attempts {st['attempts']}; rejected: generator {st['generator']}, value range "
            f"{st['value_range']}, loop cap {st['loop_cap']}, exception {st['exception']}, "
            f"no forbidden pair {st['no_forbidden_pair']}; duplicates {st['duplicate']}; "
            f"non-deterministic {st['nondeterministic']}",
            f"- full config: `{b['config_name']}/build.json`",
            "",
        ]
    body += [
        "## Deduplication and leakage",
        "",
        "Within each config, one global SHA-256 hash set over the raw snippets is applied before",
        "splitting (paper App. C.4): no snippet appears twice in any split or across splits.",
        "Test and validation examples pass the determinism filter: every two consecutive trace",
        "steps fit in the model's context window (Sec. 2.2, C.5).",
        "",
        "## Citation",
        "",
        "Cite the TinyTracing paper and this companion (see `CITATION.cff` in the repository).",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(yaml + [""] + body))
    return path


# --- reading -----------------------------------------------------------------------------------
def load(out: str | os.PathLike, config: str, split: str = "test"):
    """``datasets.load_dataset`` on a local Hub-layout folder (no network)."""
    from datasets import load_dataset

    folder = Path(out)
    if not (folder / config).is_dir():
        have = sorted(p.name for p in folder.iterdir() if (p / "build.json").exists()) if folder.is_dir() else []
        raise FileNotFoundError(f"no config {config!r} in {folder} (have: {', '.join(have) or 'none'})")
    return load_dataset(str(folder), config, split=split)


def read_split(out: str | os.PathLike, config: str, split: str = "test",
               columns=("code", "trace")) -> list[dict]:
    """The rows of one split as dicts, read with pyarrow (no ``datasets``: what the
    experiments, benchmarks and GPU machines without ``datasets`` use)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(out, config).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split} split of config {config!r} in {out}")
    return pa.concat_tables([pq.read_table(f, columns=list(columns)) for f in files]).to_pylist()


def token_stream(out: str | os.PathLike, config: str, split: str = "train") -> np.memmap:
    """The uint8 token stream of a split (examples back to back, each ending with EOS)."""
    path = Path(out) / config / _TOKENS_DIR / f"{split}.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build {config!r} with a {split} split and tokens")
    return np.memmap(path, dtype=np.uint8, mode="r")


def push(out: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         include_tokens: bool = False) -> str:
    """Publish a built folder as a Hub dataset (same config names, same layout)."""
    from huggingface_hub import HfApi

    folder = Path(out)
    if not (folder / "README.md").exists():
        raise FileNotFoundError(f"{folder} has no README.md: is it a built dataset?")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    ignore = [".*", "*/.*"] + ([] if include_tokens else [f"*/{_TOKENS_DIR}/*"])
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                             ignore_patterns=ignore, commit_message="Upload TinyTracing data")
    return str(getattr(info, "commit_url", info))


def build_preset(preset: str, out, num_snippets: int, seed: int = 0, **kw) -> dict:
    """Convenience: build a named preset (see :mod:`tinytrace.config`)."""
    workers = kw.pop("workers", None)
    progress = kw.pop("progress", True)
    gen_overrides = kw.pop("generator_overrides", {})
    cfg = BuildConfig(get_preset(preset, **gen_overrides), num_snippets=num_snippets, seed=seed, **kw)
    return build(cfg, out, workers=workers, progress=progress)


# --- the shipped test sets ---------------------------------------------------------------------
RELEASE_SIZE = 1024  # every test set of the paper has 1,024 snippets (Sec. 3.4, 4.1-4.3)
RELEASE_PCTS = (10, 50, 90, 95, 98, 100)  # the `gpu` scale's exclusion percentages (Sec. 4.2)
RELEASE_SCOPES = ("assignment", "global")  # Sec. 4.2 and 4.2.1
TEST_SEED_OFFSET = 1000  # a stand-alone test set uses seed + 1000 (experiments.Cache.test_set)


@dataclass
class ReleaseSet:
    """One shipped test set: built like the experiments build it, so the Hub copy is the set
    the sections evaluate. ``split_of`` says whether it is the test split of a training corpus
    (``build`` fills the test split first, so it does not depend on the corpus size) or a
    stand-alone test set."""

    name: str
    generator: GeneratorConfig
    seed: int
    size: int
    used_by: str  # paper sections and role
    split_of: str | None = None  # the training corpus whose test split this is
    made: str = ""  # how the generator differs from its preset, in words

    def build_config(self, chunk_size: int = 1024, context: int = 512) -> BuildConfig:
        return BuildConfig(self.generator, num_snippets=self.size, seed=self.seed,
                           test_size=self.size, validation_size=0, context=context,
                           config_name=self.name, chunk_size=chunk_size, tokens=False)


def release_sets(size: int = RELEASE_SIZE, seed: int = 0, pcts=RELEASE_PCTS,
                 scopes=RELEASE_SCOPES) -> list[ReleaseSet]:
    """The test sets shipped in ``data/tinytracing``, in card order: what the sections evaluate
    at the ``gpu`` and ``paper`` scales with experiment seed ``seed`` (``tests/test_release.py``
    checks it against :mod:`tinytrace.experiments`)."""
    from tinytrace.lang.config import sample_pairs

    base = get_preset("base")
    test_seed = seed + TEST_SEED_OFFSET
    sets = [
        ReleaseSet("base", base, seed, size, "ID test (Sec. 3.4, 4.1, 4.4, App. E, G)",
                   split_of="the base training corpus"),
        ReleaseSet("longer", get_preset("longer"), test_seed, size,
                   "OOD length: 11-17 statements (Sec. 4.3, 4.4, App. G)"),
        ReleaseSet("deeper", get_preset("deeper"), test_seed, size,
                   "OOD depth: max depth 3 or 4 (Sec. 4.3, 4.4, App. G)"),
        ReleaseSet("depth-0-5", get_preset("depth-0-5"), seed, size,
                   "curriculum ID test: max depth 0-5 (Sec. 4.3.1)",
                   split_of="the depth 0-5 curriculum training corpus"),
    ]
    for d in (6, 7, 8, 9):
        sets.append(ReleaseSet(f"depth-{d}", get_preset(f"depth-{d}"), test_seed, size,
                               f"curriculum test: max depth exactly {d} (Sec. 4.3.1, App. F)"))
    for scope in scopes:
        sec = "Sec. 4.2, Fig. 4a" if scope == "assignment" else "Sec. 4.2.1, Fig. 4b"
        for pct in pcts:
            pairs = sample_pairs(pct, seed=seed, alphabet=base.variables)
            sets.append(ReleaseSet(
                f"allowed-{scope}-{pct}",
                base.replace(name=f"{scope}-{pct}", forbidden_pairs=pairs, exclusion_scope=scope),
                seed, size, f"allowed-pairs test at {pct}% {scope} exclusion ({sec})",
                split_of=f"the {pct}% {scope}-exclusion training corpus",
                made=f"`base` with the {len(pairs)} pairs of `sample_pairs({pct}, seed={seed})` "
                     f"excluded ({scope} scope)"))
    for pct in pcts:
        pairs = sample_pairs(pct, seed=seed, alphabet=base.variables)
        sets.append(ReleaseSet(
            f"excluded-{pct}",
            base.replace(name=f"excluded-{pct}", forbidden_pairs=pairs, require_forbidden_pair=True),
            test_seed, size,
            f"excluded-pairs test at {pct}% exclusion, both scopes (Sec. 4.2, 4.2.1, Fig. 4)",
            made=f"`base`; every snippet executes an `x = u op v` whose pair is one of the "
                 f"{len(pairs)} of `sample_pairs({pct}, seed={seed})`"))
    return sets


def build_release(out: str | os.PathLike, sets: list[ReleaseSet] | None = None,
                  only: list[str] | None = None, chunk_size: int = 1024,
                  log=print) -> list[dict]:
    """Build the shipped test sets (default :func:`release_sets`) into ``out``, one config
    each, and the dataset card; one progress line per config. ``only`` rebuilds some of them.
    Deterministic: a rebuild leaves the parquet files, ``build.json`` and the card unchanged."""
    sets = release_sets() if sets is None else list(sets)
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError("release set names must be unique")
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown release config(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(names)}")
    out = Path(out)
    todo = [(i, s) for i, s in enumerate(sets) if not only or s.name in only]
    t0 = time.time()
    summaries = []
    width = max(len(n) for n in names)
    for k, (order, rs) in enumerate(todo, 1):
        if log:
            log(f"[{k:2d}/{len(todo)}] {rs.name:<{width}} ", end="", flush=True)
        meta = {"order": order, "used_by": rs.used_by, "split_of": rs.split_of,
                "made": rs.made, "command": f"tinytrace data release --only {rs.name}"}
        summary = build(rs.build_config(chunk_size=chunk_size), out, workers=1, progress=False,
                        release=meta)
        summaries.append(summary)
        if log:
            tok = summary["tokens"].get("test", {})
            log(f"{summary['splits']['test']} snippets, mean {tok.get('mean_tokens')} tokens, "
                f"seed {rs.seed}, {summary['stats']['attempts']} attempts, "
                f"{summary['seconds']:.1f} s", flush=True)
    if log:
        extra = sorted(p.parent.name for p in out.glob("*/build.json")
                       if p.parent.name not in names)
        if extra:
            log(f"kept {', '.join(extra)} (not in the release list; the card lists them too)")
        log(f"release: {len(todo)} configs into {out} in {time.time() - t0:.1f} s")
    return summaries
