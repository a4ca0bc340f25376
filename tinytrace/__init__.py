"""tinytrace: the reproducible companion of the TinyTracing paper."""
__version__ = "0.1.0"
