"""The paper's ablations on the shapes world: the default run with one ART·V component changed.

    python -m artv_jax.train --config=configs/ablations.py:no_mask  --workdir=workdirs/ablations/no_mask
    python -m artv_jax.train --config=configs/ablations.py:no_noise --workdir=workdirs/ablations/no_noise
    python -m artv_jax.train --config=configs/ablations.py:no_anchor --workdir=workdirs/ablations/no_anchor
    python -m artv_jax.train --config=configs/ablations.py:r1       --workdir=workdirs/ablations/r1
    python -m artv_jax.train --config=configs/ablations.py:own_rollouts --workdir=workdirs/ablations/own_rollouts
    python -m artv_jax.evaluate --workdir=workdirs/ablations/no_mask --captions=48 --lengths=16,64 --modes=i2v \\
        --steps=10

Each variant keeps the default's data, model size, steps and batch (the same training budget).
Expected (R = 2 default, 2026-12-07, docs/ablations.md; means of seeds 0 and 1): 64-frame image-to-video
clean frames / frames right no_mask 0.74 / 0.48, no_noise 0.74 / 0.47, no_anchor 0.74 / 0.50, own_rollouts
0.71 / 0.46, against the default's 0.75 / 0.51; r1 (seed 0) 0.70 / 0.44.

- no_mask:   m = 1 everywhere (plain diffusion conditioned on the references; no masked diffusion).
- no_noise:  no noise augmentation of the references, in training (s_max = 0) and sampling (ref_level = 0).
- no_anchor: the adapter sees a zero anchor instead of frame 0 (no anchored conditioning).
- r1:        one reference frame (R = 1) instead of the default's two (ART·V's own default: R = 2 was an
             ablation of the paper, and is this project's default since 2026-12-07).
- own_rollouts: a mechanism the default leaves off, switched on: from step 1300 on, a quarter of the tuples
             take their newest reference from the model's own rollout (K = 1, 4 DDIM steps; the target stays
             the true frame; diffusion/rollout.py). The training budget is the same in steps, not in time.

The pretrained image base against training from scratch is `configs/shapes.py:one_stage`; history guidance
is a sampling option (`evaluate --ref_guidance=2`, `--history_level`).
"""

from configs import shapes

VARIANTS = ("no_mask", "no_noise", "no_anchor", "r1", "own_rollouts")


def get_config(variant: str = "no_mask"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown ablation {variant!r}; choose one of {VARIANTS}.")
    c = shapes.get_config()
    if variant == "no_mask":
        c.model.use_mask = False
    elif variant == "no_noise":
        c.objective["s_max"] = 0.0
        c.sample.ref_level = 0.0
    elif variant == "no_anchor":
        c.model.use_anchor = False
    elif variant == "own_rollouts":
        c.objective.update(rollout_frames=1, rollout_start=1300)
    else:
        c.model.artv["num_ref_frames"] = 1
    return c
