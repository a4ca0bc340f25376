"""The paper's experiments: the scales, the artifact cache, the six runners (and their training
runs as separate jobs) and the analysis that turns their tables into the paper's reported
values."""
from .analysis import (
    COLLAPSE_EM,
    HIGH_EM,
    classify_failure,
    failure_counts,
    measured,
    select_sft,
    train_hours,
)
from .cache import Cache
from .jobs import run_commands, submit_runs
from .runners import (
    EXPERIMENTS,
    RUNNERS,
    TrainingRun,
    base_run_dir,
    curriculum_counts,
    evaluate_trained,
    generator_stats,
    mix_corpus,
    run_experiment,
    run_tokens,
    run_training,
    train_log,
    training_runs,
    training_tokens,
)
from .scales import (
    SCALES,
    Scale,
    get_scale,
    paper_task,
    scale_table,
    scaled_task,
    tokens_per_example,
)

__all__ = [
    "COLLAPSE_EM",
    "EXPERIMENTS",
    "HIGH_EM",
    "RUNNERS",
    "SCALES",
    "Cache",
    "Scale",
    "TrainingRun",
    "base_run_dir",
    "curriculum_counts",
    "evaluate_trained",
    "generator_stats",
    "get_scale",
    "measured",
    "tokens_per_example",
    "training_tokens",
    "classify_failure",
    "failure_counts",
    "mix_corpus",
    "paper_task",
    "run_commands",
    "run_experiment",
    "run_tokens",
    "run_training",
    "scale_table",
    "scaled_task",
    "select_sft",
    "submit_runs",
    "train_hours",
    "train_log",
    "training_runs",
]
