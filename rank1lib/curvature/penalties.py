"""EWC penalties summed over past tasks, each called as penalty(model): rank-1 (paper eq. 6), diagonal, rank-k (app. E.4.1).

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

from .engines import _selected
from .statistics import TaskStats

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


class Rank1EWC(torch.nn.Module):
    """lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2 (eq. 6) over the tasks added; call it as
    penalty(model) inside the training loss (float32 even under autocast; plain tensors, DDP-safe)."""

    def __init__(self, lam: float = 15000.0):
        super().__init__()
        self.lam = float(lam)
        self.names, self.shapes = None, None
        self.register_buffer("mu", torch.zeros(0, 0))          # (K, P) one row per past task
        self.register_buffer("c_star", torch.zeros(0, dtype=torch.float64))  # (K,)
        self.register_buffer("theta_star", torch.zeros(0, 0))  # (K, P)
        self._impl = None

    @property
    def n_tasks(self) -> int:
        """Number of tasks added so far."""
        return len(self.c_star)

    def _check(self, model, names=None, shapes=None):
        names = names or self.names
        got, params = _selected(model, names)
        shapes = shapes or self.shapes
        if [list(p.shape) for p in params] != shapes:
            raise ValueError("the model's parameters do not match the statistics (names or shapes differ)")
        return params

    def add_task(self, model: torch.nn.Module, stats: TaskStats):
        """Consolidate one finished task (its statistics from task_statistics on the same parameters)."""
        if self.names is not None and (stats.names != self.names or stats.shapes != self.shapes):
            raise ValueError("these statistics cover other parameters than the tasks already added")
        self._check(model, stats.names, stats.shapes)
        self.names, self.shapes = stats.names, stats.shapes
        row = lambda v: v.reshape(1, -1).float()  # noqa: E731
        self.mu = torch.cat([self.mu, row(stats.mu)]) if len(self.mu) else row(stats.mu)
        self.theta_star = torch.cat([self.theta_star, row(stats.theta_star)]) if len(self.theta_star) \
            else row(stats.theta_star)
        self.c_star = torch.cat([self.c_star, torch.tensor([stats.c_star], dtype=torch.float64)])
        self._impl = None

    def _build(self, model):
        """The per-step form: an LowRankPenalty over the selected parameters, one direction per task."""
        self._check(model)
        impl = LowRankPenalty(self.lam, select=lambda m: _selected(m, self.names)[1])
        for mu, c, theta in zip(self.mu, self.c_star, self.theta_star):
            impl.add_task(model, mu, [float(c)], theta_star=theta)
        return impl

    def forward(self, model: torch.nn.Module) -> torch.Tensor:
        """lam/2 sum_k c*_k (mu_k^T (theta - theta*_k))^2 at the model's current weights (a scalar with
        gradient; 0 before the first task). `model` may be wrapped in DDP or torch.compile."""
        if len(self.c_star) == 0:
            return next(p for p in model.parameters()).new_zeros(())
        if self._impl is None:
            self._impl = self._build(model)
        return self._impl(model)

    def save(self, path):
        """Write the consolidated statistics to a safetensors file (names and shapes in its metadata)."""
        import json
        from safetensors.torch import save_file
        save_file({"mu": self.mu.contiguous(), "c_star": self.c_star.contiguous(),
                   "theta_star": self.theta_star.contiguous()}, str(path),
                  metadata={"lam": str(self.lam), "names": json.dumps(self.names), "shapes": json.dumps(self.shapes),
                            "format": "rank1lib.Rank1EWC/1"})

    @classmethod
    def load(cls, path, model: torch.nn.Module | None = None) -> "Rank1EWC":
        """Read a penalty written by save(); with `model`, check that it has the same parameters."""
        import json
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "rank1lib.Rank1EWC/1":
                raise ValueError(f"{path}: not a Rank1EWC file")
            t = {k: f.get_tensor(k) for k in f.keys()}
        pen = cls(float(meta["lam"]))
        pen.names, pen.shapes = json.loads(meta["names"]), json.loads(meta["shapes"])
        pen.mu, pen.c_star, pen.theta_star = t["mu"], t["c_star"], t["theta_star"]
        if model is not None:
            pen._check(model)
        return pen
