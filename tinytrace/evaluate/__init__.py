"""Greedy exact-match evaluation (Sec. 4)."""
from .core import *  # noqa: F401,F403
