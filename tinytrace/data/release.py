"""The shipped test sets: ``data/tinytracing``, built like the experiments build them, so the
Hub copy is the set each section evaluates (paper Sec. 3.4, 4.1-4.3, App. F).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tinytrace.lang.config import GeneratorConfig, get_preset, sample_pairs

from .build import BuildConfig, build

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


class PairCoverage(NamedTuple):
    """The corpora of one pair-coverage run (Sec. 4.2, 4.2.1): ``pct`` % of the variable pairs
    (``pairs``) never appear together in ``scope``. ``allowed`` generates the training corpus
    (its test split is the allowed-pairs test set); ``excluded`` generates the stand-alone
    excluded-pairs test set, where every snippet executes an assignment on one of the pairs
    (the same for both scopes; None when no pair is excluded)."""

    scope: str
    pct: int
    pairs: tuple[str, ...]
    allowed: GeneratorConfig
    excluded: GeneratorConfig | None


def coverage_configs(base: GeneratorConfig, pcts=RELEASE_PCTS, scopes=RELEASE_SCOPES,
                     seed: int = 0) -> list[PairCoverage]:
    """The pair-coverage corpora for generator ``base`` at each exclusion percentage and scope
    (scope-major order), the pairs drawn by ``sample_pairs(pct, seed)`` over ``base``'s
    variables: what the pair-coverage experiment trains and evaluates on and what the shipped
    ``allowed-*`` and ``excluded-*`` sets are."""
    out = []
    for scope in scopes:
        for pct in pcts:
            pairs = sample_pairs(pct, seed=seed, alphabet=base.variables)
            allowed = base.replace(name=f"{scope}-{pct}", forbidden_pairs=pairs,
                                   exclusion_scope=scope)
            excluded = base.replace(name=f"excluded-{pct}", forbidden_pairs=pairs,
                                    require_forbidden_pair=True) if pairs else None
            out.append(PairCoverage(scope, pct, pairs, allowed, excluded))
    return out


def release_sets(size: int = RELEASE_SIZE, seed: int = 0, pcts=RELEASE_PCTS,
                 scopes=RELEASE_SCOPES) -> list[ReleaseSet]:
    """The test sets shipped in ``data/tinytracing``, in card order: what the sections evaluate
    at the ``gpu`` scale with experiment seed ``seed`` (and at ``paper``, whose exclusion grid
    adds further percentages) (``tests/test_release.py``
    checks it against :mod:`tinytrace.experiments`)."""
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
    coverage = coverage_configs(base, pcts, scopes, seed=seed)
    for cov in coverage:
        sec = "Sec. 4.2, Fig. 4a" if cov.scope == "assignment" else "Sec. 4.2.1, Fig. 4b"
        sets.append(ReleaseSet(
            f"allowed-{cov.scope}-{cov.pct}", cov.allowed, seed, size,
            f"allowed-pairs test at {cov.pct}% {cov.scope} exclusion ({sec})",
            split_of=f"the {cov.pct}% {cov.scope}-exclusion training corpus",
            made=f"`base` with the {len(cov.pairs)} pairs of `sample_pairs({cov.pct}, seed={seed})` "
                 f"excluded ({cov.scope} scope)"))
    # one excluded-pairs set per percentage: it is the same for both scopes
    excluded = {cov.pct: cov for cov in coverage if cov.excluded is not None}
    for pct, cov in excluded.items():
        sets.append(ReleaseSet(
            f"excluded-{pct}", cov.excluded, test_seed, size,
            f"excluded-pairs test at {pct}% exclusion, both scopes (Sec. 4.2, 4.2.1, Fig. 4)",
            made=f"`base`; every snippet executes an `x = u op v` whose pair is one of the "
                 f"{len(cov.pairs)} of `sample_pairs({pct}, seed={seed})`"))
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
