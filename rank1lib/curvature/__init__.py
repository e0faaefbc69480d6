"""Curvature of a loss around a learned task, and the penalties built from it.

One concept per module: per-sample gradient engines (engines, hooks), task statistics (mu, c*,
the diagonal and rank-k Fisher; statistics), the Fisher spectrum from the Gram matrix (spectrum),
and the EWC penalties (penalties). Nothing here knows about diffusion: the loss comes in as
`per_sample_loss(model, batch)`; rank1lib.fisher adapts the book's diffusion loss to it.

    stats = task_statistics(model, per_sample_loss, batches)        # mu, c*, theta* of the task just learned
    penalty = Rank1EWC(lam=15000.0)
    penalty.add_task(model, stats)
    loss = new_task_loss + penalty(model)                            # lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2
"""
from .engines import per_sample_gradients
from .penalties import DiagPenalty, LowRankPenalty, Rank1EWC, make_penalty
from .spectrum import cosine_matrix, dense_stats, gram_from_G, spectrum_from_gram
from .statistics import TaskStats, diagonal_fisher, rank_k_fisher, task_statistics

__all__ = ["TaskStats", "task_statistics", "Rank1EWC", "per_sample_gradients", "diagonal_fisher", "rank_k_fisher",
           "LowRankPenalty", "DiagPenalty", "make_penalty", "spectrum_from_gram", "gram_from_G", "dense_stats",
           "cosine_matrix"]
