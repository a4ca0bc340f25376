"""Corpora: generate -> trace -> filter -> tokenize, parallel builds, Hub-layout splits.

- :mod:`~tinytrace.data.pipeline`: one record at a time (:class:`Pipeline`);
- :mod:`~tinytrace.data.build`: parallel build, dedup, splits, shards (:func:`build`);
- :mod:`~tinytrace.data.card`: the dataset card (:func:`write_card`);
- :mod:`~tinytrace.data.io`: the folder layout, reading and pushing (:func:`read_split`);
- :mod:`~tinytrace.data.release`: the shipped test sets (:func:`release_sets`).

``tinytrace.data.build`` is the function, as ``from tinytrace.data import build`` gives it;
the module of that name is ``importlib.import_module("tinytrace.data.build")``.
"""
from tinytrace.lang.program import cooccurring_pairs, operand_pairs

from .build import BuildConfig, build, build_preset, chunk_rng
from .card import card_order, write_card
from .io import SPLITS, load, push, read_split, token_stream
from .pipeline import Pipeline
from .release import (
                      RELEASE_PCTS,
                      RELEASE_SCOPES,
                      RELEASE_SIZE,
                      TEST_SEED_OFFSET,
                      PairCoverage,
                      ReleaseSet,
                      build_release,
                      coverage_configs,
                      release_sets,
)

__all__ = [
    "BuildConfig", "PairCoverage", "Pipeline", "RELEASE_PCTS", "RELEASE_SCOPES", "RELEASE_SIZE",
    "ReleaseSet", "SPLITS", "TEST_SEED_OFFSET", "build", "build_preset", "build_release",
    "card_order", "chunk_rng", "cooccurring_pairs", "coverage_configs", "load", "operand_pairs",
    "push", "read_split", "release_sets", "token_stream", "write_card",
]
