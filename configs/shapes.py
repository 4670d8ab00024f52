"""The embedded default: a 4.7M-parameter ART·V trained on the shapes world on a CPU, in two stages as ART·V
assumes: first the world's "Stable Diffusion" (a text-to-image UNet on single frames, artv_jax/image_base.py,
into <workdir>/image_base), then ART·V from it through model.pretrained, the path a user takes from SD 1.5.

    python -m artv_jax.train --config=configs/shapes.py --workdir=workdirs/shapes
    python -m artv_jax.train --config=configs/shapes.py:one_stage --workdir=workdirs/shapes_one_stage

Expected (2026-12-07, 2-core CPU; machine-dependent, docs/experiments.md): `eval.json` clean frames 0.82, one
object 0.99, frames right 0.45, shape 0.48, direction 0.54 (chance 0.33 / 0.25), on track 0.00. one_stage
(ART·V from scratch, the same 3600 UNet updates, seeds 0 / 1): clean frames 0.63 / 0.65, shape 0.62 / 0.60,
direction 0.21 / 0.31.
"""

from artv_jax import config as config_lib

VARIANTS = ("", "one_stage")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/shapes.py; choose one of {VARIANTS}.")
    c = config_lib.defaults()

    # A quarter of the tuples are a clip's first step: only there must the caption say which way the object goes.
    c.data.start_fraction = 0.25

    c.model.patch = 2  # 32x32x3 frames <-> 16x16x12 latents, exactly
    c.model.unet.update(
        block_out_channels=(32, 64, 128), num_heads=4, norm_num_groups=16,
        # The pooled text scales and shifts the ResNets' features: a global word such as "right" can act there.
        addition_embed_type="text", addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift")
    c.model.text.update(hidden_size=64, num_layers=2, num_heads=4, max_length=12)
    # Two references: the motion is in their difference, so the net carries the velocity on (one step from the
    # true frames, `evaluate --modes=tf`: right way 0.70 / 0.65 of steps over two seeds against 0.19 with R = 1).
    c.model.artv.update(num_ref_frames=2, adapter_num_res_blocks=1, mask_init_bias=4.0)

    # x0-prediction trained on the v loss (Li and He 2025): a small net draws flat colours as x0 far more cleanly
    # than it cancels the noise in x_t, which is what predicting v or ε asks of it (docs/experiments.md).
    c.schedule.prediction_type = "sample"
    c.objective.loss_space = "v"

    c.objective.update(
        s_max=0.1, p_ref=0.3,  # text-only frames (frame 0 of text-to-video) trained more
        unmasked_weight=1.0,  # no pretrained image prior: the plain loss keeps the UNet a denoiser where m -> 0
        change_weight=4.0,  # a one-pixel move changes ~2% of the pixels; without it the object does not move
        foreground_weight=4.0,  # the outline that makes the shape is a few percent of the plain loss
        t_logit_normal=(-0.85, 1.2),  # median t = 300, where sampling decides the outline
        # First steps near pure noise (median t = 953): lower, x_t shows the move and the caption is ignored.
        start_t_logit_normal=(3.0, 0.8))

    c.train.update(num_steps=3600, global_batch=16, learning_rate=1e-3, warmup_steps=200, ema_decay=0.998)
    # The text encoder stays at its random initialisation: trained jointly it collapses the direction words.
    c.train.trainable = ("artv",)

    c.checkpoint.every = 900

    # End-of-run samples at the scores' 20 DDIM steps, one training clip long (longer: artv_jax.sample, evaluate).
    c.sample.update(num_frames=16, num_steps=20, prompts=("a red square moving right on a black background",
                                            "a yellow circle moving down on a gray background",
                                            "a blue triangle moving left on a white background"))
    c.eval.num_videos = 48

    # Stage 1, the image base: 1000 steps of 16 frames, timesteps as ART·V's; then 2600 ART·V steps from it,
    # 3600 UNet updates in all. one_stage: 3600 ART·V steps from a random initialisation.
    c.image_base.update(num_steps=1000, global_batch=16, t_logit_normal=(-0.85, 1.2))
    c.train.num_steps = 2600
    if variant == "one_stage":
        c.image_base.num_steps = 0
        c.train.num_steps = 3600
    return c
