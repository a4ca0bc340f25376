"""The paper's experiments: scales, the artifact cache and the six runners."""
from .core import *  # noqa: F401,F403
