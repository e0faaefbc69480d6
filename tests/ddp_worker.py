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
    ap.add_argument("--continual", metavar="METHOD", help="instead: one continual-learning run at ci")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.continual:
        from rank1lib import continual
        values, arrays = continual.run(load_profile("ci"), "mnist-5k", args.continual, seed=0, progress=False)
        if distributed.is_main():
            torch.save({"world": distributed.world_size(), "fid": arrays["fid"], "kid": arrays["kid"],
                        "samples": arrays["samples"], "final_losses": values["final_losses"]}, args.out)
        return
    x, y = task_data()
    torch.manual_seed(0)
    net = build_unet("small1", 10)
    # statistics of the untrained model: every rank takes every W-th chunk, sums are all-reduced
    mu, c_star = fisher.mu_c_star(net, x, y, n_samples=32, seed=5, chunk=8)
    diag = fisher.diag_fisher_api(net, x, y, n_samples=32, seed=5, chunk=8)

    def extra(model, step):  # a weight penalty through the plain model, outside DDP's forward
        if step == args.die_at and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return 1e-3 * sum(p.pow(2).sum() for p in model.parameters())

    cfg = load_profile("ci", batch_size=8, ckpt_every=1)
    found = checkpoint_info(args.ckpt) if args.ckpt else None
    out = train(net, x, y, cfg, steps=6, seed=3, ckpt_dir=args.ckpt, progress=False,
                extra_loss=extra)
    if distributed.is_main():
        torch.save({"world": distributed.world_size(), "mu": mu, "c_star": c_star, "diag": diag,
                    "losses": out["losses"], "resumed_from": found and found[0], "theta": fisher.flat_theta(net).detach()}, args.out)


if __name__ == "__main__":
    main()
