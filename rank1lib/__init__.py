"""rank1lib: executable companion to 'Avoid Catastrophic Forgetting with Rank-1 Fisher from Diffusion Models'."""
__version__ = "0.1.0"

import warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; the text bar it falls back to is fine.
warnings.filterwarnings("ignore", message="IProgress not found")


def __getattr__(name):
    """The public API, imported on first use: task_statistics, Rank1EWC, TaskStats, and for the baselines
    per_sample_gradients, diagonal_fisher, rank_k_fisher (rank1lib.consolidate)."""
    if name in ("task_statistics", "Rank1EWC", "TaskStats", "per_sample_gradients", "diagonal_fisher",
                "rank_k_fisher"):
        from . import consolidate
        return getattr(consolidate, name)
    raise AttributeError(f"module 'rank1lib' has no attribute {name!r}")
