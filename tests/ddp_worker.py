"""Run by test_distributed.py, alone or under torchrun: a few training steps of a small UNet and the
consolidation statistics; rank 0 saves what it got to the file named by --out.

--die-at K: rank 1 kills itself (SIGKILL) in step K, to test resuming after a lost process."""
import argparse
import os
import signal

import torch

from rank1lib import distributed, fisher
from rank1lib.models import build_unet
from rank1lib.profiles import load_profile
from rank1lib.train import checkpoint_info, train


def task_data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 1, 32, 32), generator=g, dtype=torch.uint8), torch.arange(40) % 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt")
    ap.add_argument("--die-at", type=int)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = task_data()
    torch.manual_seed(0)
    net = build_unet("small1", 10)
    # statistics of the untrained model: every rank takes every W-th chunk, sums are all-reduced
    mu, c_star = fisher.mu_c_star(net, x, y, n_samples=32, seed=5, chunk=8)
    diag = fisher.diag_fisher_api(net, x, y, n_samples=32, seed=5, chunk=8)

    def die(model, step):
        if step == args.die_at and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(())

    cfg = load_profile("ci", batch_size=8, ckpt_every=1)
    found = checkpoint_info(args.ckpt) if args.ckpt else None
    out = train(net, x, y, cfg, steps=6, seed=3, ckpt_dir=args.ckpt, progress=False,
                extra_loss=die if args.die_at is not None else None)
    if distributed.is_main():
        torch.save({"world": distributed.world_size(), "mu": mu, "c_star": c_star, "diag": diag,
                    "losses": out["losses"], "resumed_from": found and found[0], "theta": fisher.flat_params(net).detach()}, args.out)


if __name__ == "__main__":
    main()
