"""rank1lib: executable companion to 'Avoid Catastrophic Forgetting with Rank-1 Fisher from Diffusion Models'."""
__version__ = "0.1.0"

import warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; the text bar it falls back to is fine.
warnings.filterwarnings("ignore", message="IProgress not found")


def __getattr__(name):
    """The public API, imported on first use (rank1lib.task_statistics, rank1lib.Rank1EWC, rank1lib.TaskStats)."""
    if name in ("task_statistics", "Rank1EWC", "TaskStats"):
        from . import consolidate
        return getattr(consolidate, name)
    raise AttributeError(f"module 'rank1lib' has no attribute {name!r}")
