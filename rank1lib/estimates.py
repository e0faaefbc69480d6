"""How long work still takes, for the campaign's plan: quiet-machine seconds per unit of work at one
thread, until a run has measured its own rate. Experiments report their progress through these."""
from .train import steps_for

# Seconds per optimiser step at batch 128, one thread (this repo's 2-core Xeon, torch 2.14.1, 2026-11-25).
SEC_PER_STEP_1T = {"base": 1.43, "small1": 2.33, "small3": 0.91, "tiny": 0.6, "mid": 2.4,  # mid: 3.0 fp32 beside a base job (cl-study-mid), / 1.25 for bf16
                   "base-resnet": 0.44}  # bf16, one thread beside a base worker (AMD EPYC with avx512_bf16, 2026-12-05)
SEC_PER_SPECTRUM_T_1T = 42.0  # one timestep of the Gram path, base UNet, N = 1024, one thread
SEC_PER_STUDY_EVAL_1T = 420.0  # one A-FID point of the network study (200 DDIM-50 images per task + FID)
# one DDIM-50 image of the mid UNet with its Inception features, one thread beside another worker: rank1's
# task-4 and task-5 evaluations on mnist-5k (800 and 1,000 images) took ~10 and ~12.5 min (2026-11-27)
SEC_PER_IMAGE_1T = 0.75
GD_COST = 2.3  # a step with generative distillation (128 real + 128 replay) vs a plain step
SETUP_S = 120.0  # loading data and models before an item's first result
PER_CLASS = {"mnist-5k": 400, "fmnist": 6000, "mnist": 6000}  # training images per class
TEST_PER_CLASS = {"mnist-5k": 100, "fmnist": 1000}  # held-out images per class (the FID of a task)


def sec_per_step(model) -> float:
    """Estimated seconds per optimiser step of `model` at one thread (1.5 for a model not measured)."""
    return SEC_PER_STEP_1T.get(model, 1.5)


def task_steps(dcfg, ds, tasks=1) -> int:
    """Optimiser steps of `tasks` two-class tasks trained as one."""
    return steps_for(dcfg, 2 * tasks * (dcfg.train_per_class or PER_CLASS.get(ds, 400)))


def fid_images(dcfg, ds, tasks=1) -> int:
    """Generated images of one FID evaluation over `tasks` two-class tasks."""
    return 2 * tasks * (dcfg.fid_per_class or TEST_PER_CLASS.get(ds, 100))


def progress(step, steps, eta_s) -> dict:
    """What an experiment reports to the campaign: optimiser steps done and planned, seconds left."""
    return {"step": int(step), "steps": int(steps), "eta_s": float(eta_s)}
