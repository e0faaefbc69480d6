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
