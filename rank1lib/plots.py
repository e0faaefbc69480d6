"""Plot helpers shared by the chapters: image grids and consistent figure style."""
import matplotlib
import numpy as np
import torch


def image_grid(images, nrow, pad=2) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 image (rows of `nrow`), HxW for grey or HxWx3 for colour."""
    x = torch.as_tensor(images)
    n, c, h, w = x.shape
    ncol = nrow
    rows = int(np.ceil(n / ncol))
    out = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    out = out.permute(1, 2, 0).numpy()
    return out[..., 0] if c == 1 else out


def style():
    """Readable defaults for every figure of the book."""
    # sizes chosen for the page: a 9-inch figure shown in the ~700 px text column keeps its tick labels
    # at about 9 pt (font pt x 700 / (72 x width in inches) >= 12 px)
    matplotlib.rcParams.update({"figure.dpi": 110, "font.size": 12, "axes.titlesize": 12.5,
                                "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11,
                                "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 10,
                                "figure.constrained_layout.use": True})


def show_grid(ax, grid, title=None):
    """Draw an image grid without axes ticks."""
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


def task_grids(grids, task_classes, title):
    """One row per task ({"task<k>": image grid}), labelled with the task's classes."""
    import matplotlib.pyplot as plt
    keys = sorted(grids, key=lambda k: int(k[4:]))
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 0.75 * len(keys) + 0.6), squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        show_grid(ax, grids[k])
        ax.set_ylabel(f"task {k[4:]}: {task_classes[int(k[4:]) - 1]}", rotation=0, ha="right", va="center")
    fig.suptitle(title)
    return fig


def training_run(losses, samples):
    """Training loss per step with a moving mean (left) and the DDIM samples after training (right)."""
    import matplotlib.pyplot as plt
    losses = np.asarray(losses, dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    a.plot(losses, lw=0.8, alpha=0.5, label="per step")
    w = max(1, len(losses) // 20)
    a.plot(range(w - 1, len(losses)), np.convolve(losses, np.ones(w) / w, mode="valid"), lw=2, label=f"mean of {w}")
    a.set(xlabel="optimiser step", ylabel=r"$\mathcal{L}_{simple}$ (per-pixel mean)", title="training loss", yscale="log")
    a.legend()
    show_grid(b, samples, "DDIM samples, one row per class 0-9")
    return fig
