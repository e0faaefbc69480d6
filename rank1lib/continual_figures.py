"""The figures of chapters 5 and 6 from stored continual-learning results: the network study, Figure 4
(A-FID@k), Figure E.5 (FID of every task after each task), Figure 5 (samples over the tasks), the
lambda sweep and lambda from 0. Each takes stored records and returns a matplotlib figure; nothing is
computed here."""
import matplotlib.pyplot as plt

from . import runs, study
from .plots import show_grid


def network_study(recs, pick):
    """Joint-model A-FID against training wall time for each candidate network (study.plot)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    study.plot(ax, recs, pick)
    return fig


def fig4(shown, titles):
    """Figure 4: A-FID@k of every method, one panel per dataset ({dataset: {method: [records]}})."""
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.3), squeeze=False)
    for ax, (ds, recs) in zip(axes[0], shown.items()):
        runs.plot_afid(ax, recs, titles[ds])
    return fig


def e5(recs, title):
    """Figure E.5: FID of task i after each task k >= i, one panel per task."""
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4), sharey=True)
    axes[1, 2].axis("off")
    runs.plot_task_curves(axes.ravel()[:5], recs)
    fig.suptitle(title)
    return fig


def fig5(rows, title):
    """Figure 5: one row of sample pairs per method ({method: image grid}) after each task."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.3 * len(rows)), squeeze=False)
    for ax, (m, grid) in zip(axes[:, 0], rows.items()):
        show_grid(ax, grid, runs.NAMES[m])
    fig.suptitle(title)
    return fig


def lambda_sweep(swept, gd0):
    """A-FID and forgetting of the swept methods against lambda, GD alone as lambda = 0 (study.plot_sweep)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    study.plot_sweep(axes, swept, gd0)
    return fig


def lambda_from_zero(panels):
    """One row per (points, title): the sweep with GD alone drawn at lambda = 0 (study.plot_lambda_from_zero)."""
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 4.1 * len(panels)), squeeze=False)
    for row, (pts, title) in zip(axes, panels):
        study.plot_lambda_from_zero(row, pts, title)
    return fig
