"""Greedy exact-match evaluation (Sec. 4): :func:`evaluate`, its decoders (:mod:`.decode`) and
metrics (:mod:`.metrics`)."""
from .bench import bench_eval
from .core import Record, evaluate, make_records, resolve_device, save_results
from .decode import (
                     StaticDecoder,
                     fit_window,
                     greedy_generate,
                     greedy_generate_static,
                     restart_offset,
                     teacher_forced,
                     tf_segments,
)
from .metrics import COUNTS, METRICS, SCORES, exact_match, final_state, first_wrong, scores, tf_metrics

__all__ = ["COUNTS", "METRICS", "SCORES", "Record", "StaticDecoder", "bench_eval", "evaluate", "exact_match", "final_state", "first_wrong",
           "fit_window", "greedy_generate", "greedy_generate_static", "make_records",
           "resolve_device", "restart_offset", "save_results", "scores", "teacher_forced", "tf_metrics",
           "tf_segments"]
