"""rank1lib: executable companion to 'Avoid Catastrophic Forgetting with Rank-1 Fisher from Diffusion Models'.

The public API (rank1lib.curvature): task_statistics, TaskStats and Rank1EWC for rank-1 EWC in any
training loop; per_sample_gradients, diagonal_fisher, rank_k_fisher, LowRankPenalty, DiagPenalty for
the baselines; spectrum_from_gram for the Fisher's spectrum.
"""
__version__ = "0.1.0"

import warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; the text bar it falls back to is fine.
warnings.filterwarnings("ignore", message="IProgress not found")

__all__ = ["TaskStats", "task_statistics", "Rank1EWC", "per_sample_gradients", "diagonal_fisher", "rank_k_fisher",
           "LowRankPenalty", "DiagPenalty", "spectrum_from_gram"]


def __getattr__(name):
    """The public API, imported on first use (torch and diffusers load only when it is needed)."""
    if name in __all__:
        from . import curvature
        return getattr(curvature, name)
    raise AttributeError(f"module 'rank1lib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
