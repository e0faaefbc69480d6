"""Data-parallel runs over several processes (torch DDP), started by `accelerate launch` or `torchrun`.

One run on W processes: every rank draws the same seeded global batch (images, t and noise) and
trains on its W-th of it; DDP averages the gradients, so W ranks take the single-process step up
to the order of floating-point sums. Statistics (mu, c*, the diagonal Fisher) are sums over samples,
each rank taking every W-th batch, all-reduced. Rank 0 alone writes checkpoints, snapshots and
results. Without a launcher (WORLD_SIZE unset or 1) nothing here touches torch.distributed, and
accelerate is never imported: it is only the launcher.
"""
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in this run (the launcher's WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the one process that writes files."""
    return rank() == 0


def local_device():
    """cuda:LOCAL_RANK for a multi-process run on a GPU box, else None (the usual choice)."""
    if active() and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def init(device=None):
    """Join the launcher's process group once (nccl on CUDA, gloo on CPU); no-op in one process."""
    if active() and not dist.is_initialized():
        device = torch.device(device or local_device() or "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def barrier():
    """Wait for every rank (joining the process group first if needed)."""
    if active():
        init()
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (in place); `t` itself in one process."""
    if active():
        init(t.device)
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device=None) -> bool:
    """True if `flag` is true on any rank (so that all ranks take the same branch)."""
    if not active():
        return flag
    device = device or local_device() or "cpu"
    return bool(all_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def gather(obj) -> list:
    """Every rank's `obj` (any picklable object), in rank order, on every rank; [obj] in one process."""
    if not active():
        return [obj]
    init()
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, what="batch") -> slice:
    """This rank's contiguous W-th of n items; n must split evenly (every rank the same share)."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"{what} of {n} does not split evenly over {w} processes; choose a multiple of {w}")
    k = n // w
    return slice(r * k, (r + 1) * k)


def mine(items: list) -> list:
    """Every W-th item, starting at this rank (how statistics split their batches)."""
    return list(items)[rank()::world_size()]


def wrap(model, device):
    """DistributedDataParallel around `model` in a multi-process run, else `model`."""
    if not active():
        return model
    init(device)
    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def run_lock(path):
    """The per-run file lock, held by rank 0 alone (two ranks of one run must not wait for each other)."""
    import contextlib

    from filelock import FileLock
    return FileLock(str(path)) if is_main() else contextlib.nullcontext()
