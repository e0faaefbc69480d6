"""Every seed the book derives from a run's seed, in one place: which random stream each part of a
run draws from, so that a rerun reproduces it and two parts never share a stream by accident."""

FID_SAMPLING = 10_000  # DDIM noise of every FID evaluation; task i's images use FID_SAMPLING + i


def task(seed, k=0):
    """Training batches, task statistics and the replay pool of task k + 1 of a continual run."""
    return seed * 1_000 + k


def timestep(seed, t):
    """The joint samples (x0, noise) of the Fisher spectrum at timestep t of an analysis run."""
    return seed * 1_000 + t


def power_iteration(seed, it, iters):
    """The fresh sample of power iteration `it` (1..iters); the final Rayleigh-Ritz step reuses task(seed)."""
    return seed * 1_000 + (it + 1 if it < iters else 0)


def fid_sampling(s=0):
    """The DDIM noise of FID sampling seed s (the learned-task-1 runs take three, s = 0, 1, 2)."""
    return FID_SAMPLING + 1_000 * s


def stream(seed, i):
    """Sub-stream i of a seeded process: epoch i of training (batch order), batch i of DDIM sampling (noise)."""
    return seed * 1_000_003 + i
