"""ART·V fine-tuned from Stable Diffusion on WebVid, for a TPU pod slice.

    python -m artv_jax.train --config=configs/webvid.py --workdir=gs://BUCKET/artv/webvid256 \
        --config.model.pretrained=/mnt/sd15 --config.data.data_dir=gs://BUCKET/tfds
    python -m artv_jax.train --config=configs/webvid.py:512 ...     # 512x512 variant

Needs a local diffusers Stable Diffusion directory (SD 1.5, or SD 2.1-base for
v-prediction; `model.pretrained`) and the `webvid` TFDS data set built from a
local WebVid download (`docs/data.md`; config `webvid/256` or `webvid/512`).

Sized for a v4-32 (16 chips, 32 GiB HBM each) or a v5e-32 (32 chips, 16 GiB):

- mesh `(-1, 4)`: parameters, Adam moments and EMA (about 14 GiB in fp32 for
  SD's 860M-parameter UNet plus the adapter) are sharded 4 ways over `fsdp`
  (~3.5 GiB per chip), the batch over all chips. `(-1, 1)` (pure data
  parallel) fits on v4 only; `(-1, 8)` gives the 512 variant more room.
- global batch 256 at 256x256 (8 per chip on v5e-32, 16 on v4-32), 128 at
  512x512; bf16 compute, fp32 master weights, rematerialised UNet blocks.
- AdamW 2e-5 after 1000 warm-up steps, cosine to 10%, weight decay 0.01,
  clipping at 1.0; EMA 0.9999. The UNet and the (zero-initialised) adapter
  train; VAE and text encoder stay frozen.
- one reference frame, frame strides 1-3 at 8 fps, noise augmentation up to
  s_max = 0.2, text/reference dropout 10% each (classifier-free guidance).
"""

import ml_collections


def get_config(variant: str = "256"):
    if variant not in ("256", "512"):
        raise ValueError(f"configs/webvid.py takes ':256' or ':512', got {variant!r}.")
    size = int(variant)
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        name="webvid", tfds_name=f"webvid/{size}", split="train", data_dir="", size=size, num_frames=16,
        stride_range=(1, 3), start_fraction=0.0,  # > 0 oversamples the first step of a clip (configs/shapes.py)
    ))

    c.model = ml_collections.ConfigDict()
    c.model.pretrained = ""  # required: a local diffusers SD 1.x/2.x directory (model_index.json, unet/, vae/, ...)
    c.model.artv = dict(num_ref_frames=1, adapter_num_res_blocks=2, adapter_downscale_factor=1,
                        mask_init_bias=6.0, anchor_attention=False, anchor_timestep=0)
    c.model.use_mask = True
    c.model.use_anchor = True

    # Pure ART·V: SD already denoises (no unmasked term) and the loss is not change- or foreground-weighted (the
    # foreground weight assumes a flat background). Timesteps uniform (t_logit_normal=(): SD's own training);
    # "(loc, scale)" draws them logit-normally (README, "Training at scale"); start_t_logit_normal, the same for
    # a clip's first steps only (configs/shapes.py: there it teaches the captioned direction).
    c.objective = dict(s_max=0.2, p_text=0.1, p_ref=0.1, unmasked_weight=0.0, change_weight=0.0,
                       foreground_weight=0.0, t_logit_normal=(), start_t_logit_normal=())

    c.train = ml_collections.ConfigDict(dict(
        num_steps=100_000, global_batch=256 if size == 256 else 128, learning_rate=2e-5, warmup_steps=1000,
        final_lr_fraction=0.1, weight_decay=0.01, grad_clip=1.0, ema_decay=0.9999, grad_accum=1, remat=True,
        compute_dtype="bfloat16",
        trainable=("artv",),
    ))

    c.mesh = dict(shape=(-1, 4),
                  rules=(("batch", ("data", "fsdp")), ("out", "fsdp"), ("vocab", "fsdp")))

    c.checkpoint = dict(every=1000, max_to_keep=3, async_save=True)
    c.log_every = 50
    c.compilation_cache = "~/.cache/artv_jax/xla"  # JAX's persistent compilation cache; "" leaves it off

    c.sample = ml_collections.ConfigDict(dict(
        every=5000, at_end=True,
        num_frames=16, num_steps=50, eta=0.0, text_guidance=7.5, ref_guidance=1.0, ref_level=0.02, chunk_size=8,
        prompts=("a red sports car driving along a coastal road at sunset",
                 "waves crashing on a rocky beach, aerial view",
                 "a golden retriever running through a field of flowers"),
    ))
    c.eval = dict(num_videos=0, num_frames=16, batch=8, num_steps=50)  # shapes-world scores only
    return c
