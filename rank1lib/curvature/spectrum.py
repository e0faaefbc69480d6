"""The Fisher's spectrum from the N x N Gram matrix of per-sample gradients (sec. 3.2): top
eigenvalues, the share of the first, the rank-1 approximation errors and cos(v_1, mu), exact without
ever forming the P x P Fisher; a dense reference for small P; cosines between mean gradients."""
import torch

def spectrum_from_gram(K, d2, Gmu, mu, k=5):
    """Fisher statistics (Fig. 3 b-d, Fig. 2, app. C) from the Gram quantities; float64 eigh."""
    K = K.double()
    n = K.shape[0]
    lam = torch.linalg.eigvalsh(K).flip(0).clamp_min(0)
    fro2 = float(K.pow(2).sum())
    mu2 = float(mu.double().pow(2).sum())
    muFmu = float(Gmu.double().pow(2).sum()) / n
    gnorm = (n * K.diagonal()).clamp_min(0).sqrt()
    return {
        "lam": lam[:k].numpy(),
        "r": float(lam[1] / lam[0]) if n > 1 else 0.0,
        "share": float(lam[0] / lam.sum()),
        "fro": fro2 ** 0.5,
        "trace": float(K.trace()),
        "err_diag": max(fro2 - d2, 0.0) ** 0.5 / fro2 ** 0.5,
        "err_rank1": max(fro2 - muFmu ** 2 / mu2 ** 2, 0.0) ** 0.5 / fro2 ** 0.5,
        "err_best_rank1": float(lam[1:].pow(2).sum().sqrt()) / fro2 ** 0.5,
        "c_star": muFmu / mu2 ** 2,
        "mu_norm": mu2 ** 0.5,
        "cos": (Gmu.double().abs() / (gnorm * mu2 ** 0.5).clamp_min(1e-300)).numpy(),
    }

def dense_stats(G, k=5):
    """Reference: the same statistics from the dense P x P Fisher F = G^T G / N (tests, tiny P)."""
    G = G.double()
    n = G.shape[0]
    F = G.T @ G / n
    mu = G.mean(0)
    lam = torch.linalg.eigvalsh(F).flip(0).clamp_min(0)
    c_star = float(mu @ F @ mu) / float(mu @ mu) ** 2
    fro = float(torch.linalg.matrix_norm(F))
    return {
        "lam": lam[:k].numpy(), "r": float(lam[1] / lam[0]), "share": float(lam[0] / lam.sum()),
        "fro": fro, "trace": float(F.trace()),
        "err_diag": float(torch.linalg.matrix_norm(F - torch.diag(F.diagonal()))) / fro,
        "err_rank1": float(torch.linalg.matrix_norm(F - c_star * torch.outer(mu, mu))) / fro,
        "c_star": c_star, "mu_norm": float(mu.norm()),
        "cos": (G @ mu).abs().div(G.norm(dim=1) * mu.norm()).numpy(),
    }

def gram_from_G(G):
    """Gram quantities of an explicit G (tests): the inputs of spectrum_from_gram."""
    G = G.double()
    n = G.shape[0]
    mu = G.mean(0)
    return {"K": G @ G.T / n, "d2": float(G.pow(2).mean(0).pow(2).sum()), "Gmu": G @ mu, "mu": mu}

def cosine_matrix(vectors):
    """Pairwise cosines of the rows (e.g. mu_t across t, Fig. 3a), float64."""
    V = torch.stack([v.double() for v in vectors])
    V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (V @ V.T).numpy()
