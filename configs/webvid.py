"""ART·V fine-tuned from a local Stable Diffusion 1.x/2.x on WebVid (TFDS `webvid/256` or `webvid/512`, docs/data.md).

    python -m artv_jax.train --config=configs/webvid.py --workdir=gs://BUCKET/artv/webvid256 \
        --config.model.pretrained=/mnt/sd15 --config.data.data_dir=gs://BUCKET/tfds
    python -m artv_jax.train --config=configs/webvid.py:512 ...     # 512x512 variant

Sized for a v4-32 or v5e-32 slice (parameters, Adam and EMA of SD's UNet, ~14 GiB fp32, sharded 4 ways).
Expected: not yet measured (no pod run so far).
"""

from artv_jax import config as config_lib


def get_config(variant: str = "256"):
    if variant not in ("256", "512"):
        raise ValueError(f"configs/webvid.py takes ':256' or ':512', got {variant!r}.")
    size = int(variant)
    c = config_lib.defaults()

    c.data.update(name="webvid", tfds_name=f"webvid/{size}", size=size, num_frames=16, stride_range=(1, 3))

    c.model.pretrained = ""  # required: a local diffusers SD 1.x/2.x directory (model_index.json, unet/, vae/, ...)
    c.model.artv.update(adapter_num_res_blocks=2, mask_init_bias=6.0)

    # Pure ART·V: SD already denoises (no unmasked term), no shapes-world weights, SD's uniform timesteps.
    c.objective.update(s_max=0.2, p_text=0.1, p_ref=0.1)
    # Own rollouts stay off (rollout_frames = 0): their target is the true continuation of a generated history,
    # which the shapes world knows and real clips do not; on WebVid they would need Self Forcing's
    # distribution-matching loss against a frozen teacher (artv_jax/diffusion/rollout.py).

    c.train.update(num_steps=100_000, global_batch=256 if size == 256 else 128, learning_rate=2e-5,
                   warmup_steps=1000, weight_decay=0.01, ema_decay=0.9999,
                   remat=True, compute_dtype="bfloat16")  # fp32 master weights

    c.mesh.shape = (-1, 4)  # parameters, Adam moments and EMA sharded 4 ways over 'fsdp'

    c.checkpoint.update(every=1000, max_to_keep=3)
    c.log_every = 50

    c.sample.update(every=5000, num_frames=16, num_steps=50, text_guidance=7.5,
                    prompts=("a red sports car driving along a coastal road at sunset",
                             "waves crashing on a rocky beach, aerial view",
                             "a golden retriever running through a field of flowers"))
    return c
