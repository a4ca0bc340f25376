"""The paper's experiments: the scales, the artifact cache, the six runners and the analysis
that turns their tables into the paper's reported values."""
from .analysis import COLLAPSE_EM, HIGH_EM, measured, select_sft, train_hours
from .cache import Cache
from .runners import (
    EXPERIMENTS,
    RUNNERS,
    base_run_dir,
    curriculum_counts,
    generator_stats,
    mix_corpus,
    run_experiment,
    train_log,
)
from .scales import SCALES, Scale, get_scale, paper_task, scale_table, scaled_task

__all__ = [
    "COLLAPSE_EM",
    "EXPERIMENTS",
    "HIGH_EM",
    "RUNNERS",
    "SCALES",
    "Cache",
    "Scale",
    "base_run_dir",
    "curriculum_counts",
    "generator_stats",
    "get_scale",
    "measured",
    "mix_corpus",
    "paper_task",
    "run_experiment",
    "scale_table",
    "scaled_task",
    "select_sft",
    "train_hours",
    "train_log",
]
