"""EWC penalties summed over past tasks: rank-1 (paper eq. 6), diagonal, rank-k (app. E.4.1).

Every penalty is called as `penalty(model) -> scalar` and already includes lam:
    rank-1:  lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2
    rank-k:  lam/2 sum_k sum_j s_kj (v_kj^T (theta - theta*_k))^2
    diag:    lam/2 sum_k sum_i F_k,i (theta_i - theta*_k,i)^2
The statistics refer to rank1lib's per-sample loss (per-pixel mean, see diffusion.py).
Per step a penalty concatenates the parameters once into a flat (P,) float32 vector and does one
(K x P) @ (P,) product (K: stored directions over all past tasks; u^T theta*_k is precomputed once)
or one elementwise pass for the diagonal. Looping over the parameter tensors instead costs a few
small kernels per tensor, which on a GPU made the penalty cost more than the UNet's training step.
"""
import torch

from . import diffusion, fisher


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(params):
    """The parameter tensors as one flat float32 (P,) vector (differentiable: one copy, one kernel)."""
    return torch.cat([p.reshape(-1).float() for p in params])


def _fp32(params):
    """Penalties are computed in float32 even inside a bf16 autocast region."""
    return torch.autocast(params[0].device.type, enabled=False)


class LowRankPenalty:
    """lam/2 sum_k sum_j w_kj (u_kj^T (theta - theta*_k))^2; rank-1 EWC is u = mu, w = c* (eq. 6)."""

    def __init__(self, lam, select=None):
        self.lam = float(lam)
        self.select = select or _params  # model -> the parameter tensors covered, in a fixed order
        self.R = None      # (K, P) float32: all directions of all past tasks, one row each
        self.w = None      # (K,) weights
        self.u_theta_star = None  # (K,) float64, u_kj^T theta*_k
        self.n_tasks = 0

    def add_task(self, model, U, w, theta_star=None):
        """Store task k: U (P, r) directions, w (r,) weights, theta*_k (P,) (default: the model's weights)."""
        params = self.select(model)
        P = sum(p.numel() for p in params)
        U = torch.as_tensor(U, dtype=torch.float32)
        U = U[:, None] if U.dim() == 1 else U
        if U.shape[0] != P:
            raise ValueError(f"directions of length {U.shape[0]} do not match the model's P = {P}")
        dev = params[0].device
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1).to(dev)
        if U.shape[1] != len(w):
            raise ValueError(f"{U.shape[1]} directions but {len(w)} weights")
        new = U.T.contiguous().to(dev)
        with torch.no_grad():
            ref = flat_params(params) if theta_star is None else torch.as_tensor(theta_star).reshape(-1).to(dev)
            uts = new.double() @ ref.double()
        if self.R is None:
            self.R, self.w, self.u_theta_star = new, w, uts
        else:
            self.R = torch.cat([self.R, new])
            self.w = torch.cat([self.w, w])
            self.u_theta_star = torch.cat([self.u_theta_star, uts])
        self.n_tasks += 1

    def __call__(self, model):
        params = self.select(model)
        if self.R is None or self.lam == 0:
            return params[0].new_zeros(())
        with _fp32(params):
            d = (self.R @ flat_params(params)).double() - self.u_theta_star
            return (0.5 * self.lam * (self.w * d.pow(2)).sum()).float()


def rank1_penalty(lam):
    """Rank-1 EWC (eq. 6): add tasks with add_task(model, mu, [c_star])."""
    return LowRankPenalty(lam)


class DiagPenalty:
    """lam/2 sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (diagonal EWC, Kirkpatrick et al. 2017).

    Kept in the exact pooled form  sum_k F_k (theta - t_k)^2 = A (theta - tbar)^2 + C  with
    A = sum_k F_k, tbar = sum_k F_k t_k / A and the constant C updated with the stable pooled-variance
    formula, so a step costs one pass over the parameters whatever the number of past tasks.
    """

    def __init__(self, lam):
        self.lam = float(lam)
        self.A, self.tbar, self.C = None, None, 0.0   # A, tbar: flat (P,) float32
        self.n_tasks = 0

    def add_task(self, model, F_diag):
        params = _params(model)
        P = sum(p.numel() for p in params)
        F = torch.as_tensor(F_diag).reshape(-1).to(params[0].device, torch.float32)
        if F.numel() != P:
            raise ValueError(f"vector of length {F.numel()} does not match the model's P = {P}")
        with torch.no_grad():
            t = flat_params(params).clone()
        if self.A is None:
            self.A, self.tbar = F, t
        else:
            A2 = self.A + F
            safe = torch.where(A2 > 0, A2, torch.ones_like(A2))
            self.C += float((self.A.double() * F.double() / safe.double()
                             * (self.tbar.double() - t.double()).pow(2)).sum())
            self.tbar = torch.where(A2 > 0, (self.A * self.tbar + F * t) / safe, t)
            self.A = A2
        self.n_tasks += 1

    def __call__(self, model):
        params = _params(model)
        if self.A is None or self.lam == 0:
            return params[0].new_zeros(())
        with _fp32(params):
            total = (self.A * (flat_params(params) - self.tbar).pow(2)).sum()
            return 0.5 * self.lam * (total + self.C)


def make_penalty(kind, lam):
    """'rank1' | 'rankk' -> LowRankPenalty, 'diag' -> DiagPenalty, None -> None."""
    if kind in ("rank1", "rankk"):
        return LowRankPenalty(lam)
    if kind == "diag":
        return DiagPenalty(lam)
    if kind is None:
        return None
    raise ValueError(f"unknown penalty {kind!r}; valid: rank1, rankk, diag")


def rank_k_fisher(model, x0_uint8, y, k, iters, n_samples, seed, chunk=32):
    """Top-k eigenpairs of the empirical Fisher E[g g^T] by stochastic power iteration (app. E.4.1), over
    fresh joint samples (x0, t, eps) of n_samples per iteration: the public consolidate.rank_k_fisher
    with rank1lib's loss. Returns V (P, k) float32 with orthonormal columns and s (k,) decreasing."""
    from .consolidate import rank_k_fisher as rank_k

    def draw(it):  # iteration it: a fresh sample; the final Rayleigh-Ritz step: sample seed * 1000
        return fisher.book_batches(model, x0_uint8, y, n_samples, seed * 1_000 + (it + 1 if it < iters else 0), chunk)
    with fisher.grad_mode(model):
        loss = fisher.diffusion_loss(diffusion.alpha_bar(next(model.parameters()).device))
        return rank_k(model, loss, draw, k, iters, seed)
