"""The TinyTracing language: tokenizer, program lines, tracer, generator and edits (App. A-B).

Pure Python: nothing here imports torch, numpy, pandas or the rest of the package (only the
dependency-free :mod:`tinytrace.presets`).
"""
