"""The figures and tables of chapters 2-4 from stored results: Figure 1 (Tweedie), Figure 2 (gradient
alignment), the training loss of the analysis model, Figure 3 (cosines of mu_t, top eigenvalues, r_t,
approximation errors) over seeds and per dataset, the 35.7M UNet's spectrum, the Fisher along
training, Figure 6 (model size) and appendix C (VAE vs DDPM). Each takes stored values and returns a
matplotlib figure (or a DataFrame); nothing is computed here."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .paper import APPENDIX_C as PAPER_APPC  # the paper's values, drawn as reference lines


def fig1(v):
    """Figure 1: MSE between x_t and Tweedie's scaled prediction sqrt(1 - alpha_bar_t) eps_hat, per t."""
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(v["t"], v["mse"], "o-", label=r"MSE$(x_t, \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)$")
    ax[0].set(xlabel="timestep t", ylabel="MSE", title="Fig. 1: input vs scaled prediction")
    ax[0].legend()
    ax[1].semilogy(v["t"], v["mse"], "o-")
    ax[1].set(xlabel="timestep t", ylabel="MSE (log scale)", title="same, log scale")
    return fig


def fig2(ts, cos, side):
    """Figure 2: |cos(g_i, mu_t)| of every sample as one pixel of a side x side square, one panel per t."""
    cols = 3
    rows = -(-len(ts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5, 2.45 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(ts):]:
        ax.axis("off")
    im = None
    for ax, t, c in zip(axes.flat, ts, cos):
        im = ax.imshow(np.asarray(c)[:side * side].reshape(side, side), cmap="Reds", vmin=0, vmax=1,
                       interpolation="nearest")
        ax.set(title=f"t = {t}", xticks=[], yticks=[])
        ax.grid(False)
    fig.colorbar(im, ax=axes.ravel().tolist(), label=r"$|\cos(g_i, \mu_t)|$", shrink=0.8)
    fig.suptitle("Fig. 2: per-sample gradient vs mean gradient (one pixel per sample)")
    return fig


def fig6(by_arch):
    """Figure 6: top-5 eigenvalues (top row) and r_t (bottom row) of each model ({name: values}), one column each."""
    have = list(by_arch)
    fig, ax = plt.subplots(2, len(have), figsize=(4.4 * len(have), 6.4), squeeze=False)
    r_max = 1.1 * max(max(by_arch[a]["r"]) for a in have)
    lam_lim = [min(np.min(by_arch[a]["lam"]) for a in have) / 2, 2 * max(np.max(by_arch[a]["lam"]) for a in have)]
    for j, a in enumerate(have):
        w = by_arch[a]
        lam = np.array(w["lam"])
        for i in range(lam.shape[1]):
            ax[0, j].semilogy(w["t"], lam[:, i], "o-", label=rf"$\lambda_{i + 1}$")
        ax[0, j].set(title=f"{a} (P = {w['params']:,}): top-5 eigenvalues", xlabel="timestep t",
                     ylabel="eigenvalue (log scale)", ylim=lam_lim)
        ax[1, j].plot(w["t"], w["r"], "o-")
        ax[1, j].set(title=rf"{a}: $r_t = \lambda_2/\lambda_1$", xlabel="timestep t", ylabel=r"$r_t$", ylim=(0, r_max))
    ax[0, 0].legend(ncol=2)
    return fig


def appendix_c(shares, n_vae):
    """Appendix C: share of the top Fisher eigenvalue in the trace for the VAEs (first n_vae entries of
    {label: share}) and the DDPM at each timestep, with the paper's values as lines."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(range(len(shares)), [100 * s for s in shares.values()], color=["C1"] * n_vae + ["C0"] * (len(shares) - n_vae))
    for (label, val), (ls, col) in zip(PAPER_APPC.items(), ((":", "C1"), ("--", "C1"), ("-.", "C0"))):
        ax.axhline(val, ls=ls, color=col, label=f"paper: {label}")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=9, frameon=False)
    ax.set_xticks(range(len(shares)), list(shares), rotation=30, ha="right")
    ax.set(ylabel=r"$\lambda_1 / \sum_i \lambda_i$ (%)", ylim=(0, 105))
    ax.set_title("App. C: share of the top Fisher eigenvalue", pad=26)
    return fig


def loss_curve(values, loss_curve_array):
    """Training loss of the analysis model (window means over steps), log-log."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.loglog(loss_curve_array[:, 0], loss_curve_array[:, 1])
    ax.set(xlabel="optimiser step", ylabel=r"$\mathcal{L}_{simple}$ (window mean)",
           title=f"training loss of the {values['arch']} model")
    return fig


def fig3(v):
    """Figure 3: (a) cos(mu_t, mu_t'), (b) top-5 eigenvalues of F_t, (c) r_t = lambda2/lambda1, (d) relative
    Frobenius errors of the diagonal, of c* mu mu^T (eq. 5) and of the best rank-1 matrix."""
    ts, lam = np.array(v["t"]), np.array(v["lam"])
    fig, ax = plt.subplots(2, 2, figsize=(10.5, 7.6))
    ax = ax.ravel()
    im = ax[0].imshow(np.array(v["mu_cos"]), cmap="RdBu_r", vmin=-1, vmax=1)
    ax[0].set(xticks=range(len(ts)), yticks=range(len(ts)), xticklabels=ts, yticklabels=ts,
              xlabel="t", ylabel="t", title=r"(a) $\cos(\mu_t, \mu_{t'})$")
    ax[0].grid(False)
    fig.colorbar(im, ax=ax[0], shrink=0.8)
    for j in range(lam.shape[1]):
        ax[1].semilogy(ts, lam[:, j], "o-", label=rf"$\lambda_{j + 1}$")
    ax[1].set(xlabel="timestep t", ylabel="eigenvalue (log scale)", title="(b) top-5 eigenvalues of $F_t$")
    ax[1].legend(ncol=2)
    ax[2].plot(ts, v["r"], "o-")
    ax[2].set(xlabel="timestep t", ylabel=r"$r_t = \lambda_2/\lambda_1$", title=r"(c) eigenvalue ratio $r_t$",
              ylim=(0, None))
    ax[3].plot(ts, v["err_diag"], "s-", label="diagonal")
    ax[3].plot(ts, v["err_rank1"], "o-", label=r"rank-1 $c^\star\mu\mu^\top$")
    ax[3].plot(ts, v["err_best_rank1"], ":", color="gray", label=r"best rank-1 ($\lambda_1 v_1 v_1^\top$)")
    ax[3].set(xlabel="timestep t", ylabel=r"$\|F_t - \hat F_t\|_F / \|F_t\|_F$", title="(d) relative Frobenius error",
              ylim=(0, 1.1))
    ax[3].legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=9)  # below: no curve hidden
    return fig


def fig3_table(v) -> pd.DataFrame:
    """Figure 3's numbers per timestep."""
    lam = np.array(v["lam"])
    return pd.DataFrame({"t": v["t"], "lambda1": lam[:, 0], "lambda2": lam[:, 1], "r_t": v["r"],
                         "lambda1 / sum(lambda)": v["share"], "err diag": v["err_diag"],
                         "err rank-1": v["err_rank1"], "c*": v["c_star"]}).set_index("t")


def seeds(per_seed_values, spread):
    """r_t and the approximation errors of every seed (grey) with their mean and standard error."""
    t = np.array(spread["t"])
    fig, ax = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for v in per_seed_values:
        ax[0].plot(t, v["r"], ".", color="gray", alpha=0.7)
        ax[1].plot(t, v["err_rank1"], ".", color="gray", alpha=0.7)
    ax[0].errorbar(t, spread["r"], yerr=spread["r_se"], fmt="o-", capsize=3,
                   label=f"mean $\\pm$ s.e., {len(per_seed_values)} seeds")
    ax[1].errorbar(t, spread["err_rank1"], yerr=spread["err_rank1_se"], fmt="o-", capsize=3, label="rank-1")
    ax[1].errorbar(t, spread["err_diag"], yerr=spread["err_diag_se"], fmt="s--", capsize=3, label="diagonal")
    ax[0].set(xlabel="timestep t", ylabel=r"$r_t = \lambda_2/\lambda_1$", title=r"$r_t$ over seeds", ylim=(0, None))
    ax[1].set(xlabel="timestep t", ylabel="relative Frobenius error", title="approximation errors over seeds",
              ylim=(0, 1.1))
    ax[0].legend()
    ax[1].legend()
    return fig


def datasets(by_dataset):
    """r_t and the approximation errors of the models trained on each dataset ({name: values})."""
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, w in by_dataset.items():
        ax[0].plot(w["t"], w["r"], "o-", label=name)
        ax[1].plot(w["t"], w["err_rank1"], "o-", label=f"{name}: rank-1")
        ax[1].plot(w["t"], w["err_diag"], "s--", label=f"{name}: diagonal")
    ax[0].set(xlabel="timestep t", ylabel=r"$r_t = \lambda_2/\lambda_1$", title="eigenvalue ratio per dataset",
              ylim=(0, None))
    ax[1].set(xlabel="timestep t", ylabel="relative Frobenius error", title="approximation error per dataset",
              ylim=(0, 1.1))
    ax[0].legend()
    ax[1].legend(fontsize=8)
    return fig


def cl_spectrum(b):
    """The 35.7M UNet: top eigenvalues of F_t and the approximation errors."""
    bl = np.array(b["lam"])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for j in range(bl.shape[1]):
        ax[0].semilogy(b["t"], bl[:, j], "o-", label=rf"$\lambda_{j + 1}$")
    ax[0].set(xlabel="timestep t", ylabel="eigenvalue (log scale)", title="cl UNet: top eigenvalues of $F_t$")
    ax[0].legend(ncol=2)
    ax[1].plot(b["t"], b["err_diag"], "s-", label="diagonal")
    ax[1].plot(b["t"], b["err_rank1"], "o-", label=r"rank-1 $c^\star\mu\mu^\top$")
    ax[1].set(xlabel="timestep t", ylabel="relative Frobenius error", title="cl UNet: approximation error",
              ylim=(0, 1.1))
    ax[1].legend()
    return fig


def cl_table(b) -> pd.DataFrame:
    """The 35.7M UNet's spectrum per timestep."""
    return pd.DataFrame({"t": b["t"], "lambda1": np.array(b["lam"])[:, 0], "r_t": b["r"],
                         "lambda1 / sum(lambda)": b["share"], "err diag": b["err_diag"],
                         "err rank-1": b["err_rank1"]}).set_index("t")


def along_training(traj, init=None):
    """r_t and the rank-1 error at each weight snapshot, one line per t, with the re-initialised models'
    mean +- 2 s.d. at the left, and the training loss around each snapshot."""
    rows, tt = traj["rows"], traj["t"]
    steps = np.array([max(r["step"], 1) for r in rows])  # initialisation drawn at step 1 on the log axis
    fig, ax = plt.subplots(1, 3, figsize=(12.5, 4))
    for j, t in enumerate(tt):
        ax[0].semilogx(steps, [r["r"][j] for r in rows], "o-", color=f"C{j}", label=f"t = {t}")
        ax[1].semilogx(steps, [r["err_rank1"][j] for r in rows], "o-", color=f"C{j}", label=f"t = {t}")
        if init is not None:
            r0 = np.array([r["r"][j] for r in init["rows"]])
            ax[0].errorbar([0.7], [r0.mean()], yerr=[2 * r0.std(ddof=1)], fmt="_", color=f"C{j}", capsize=3)
    ax[0].set(xlabel="optimiser step (log; 1 = initialisation)", ylabel=r"$r_t = \lambda_2/\lambda_1$",
              title=r"$r_t$ along training", ylim=(0, None))
    ax[1].set(xlabel="optimiser step (log)", ylabel="relative Frobenius error", title=r"rank-1 error $c^\star\mu\mu^\top$",
              ylim=(0, 1.05))
    loss = [(r["step"], r["loss"]) for r in rows if r["loss"] is not None]
    ax[2].loglog(*zip(*loss), "ko-")
    ax[2].set(xlabel="optimiser step (log)", ylabel=r"training loss (mean of 32 steps)", title="training loss")
    ax[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=9)  # below the panel
    return fig
