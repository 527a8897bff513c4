"""Training a model: a recipe (`recipe`), its data (`data`), the resumable loop (`loop`, with
`loss` and `ranks`), its saved state (`state`), log (`log`) and metrics (`evaluate`), and the
self-requeueing SLURM job (`job`)."""

from .evaluate import evaluate_checkpoint  # noqa: F401
from .loop import train  # noqa: F401
from .recipe import Recipe  # noqa: F401
