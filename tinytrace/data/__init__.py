"""Corpora: generate -> trace -> filter -> tokenize, parallel builds, Hub-layout splits."""
from .core import *  # noqa: F401,F403
