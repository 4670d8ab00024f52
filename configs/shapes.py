"""The embedded default: a tiny ART·V trained from scratch on the shapes world, on a CPU.

    python -m artv_jax.train --config=configs/shapes.py --workdir=workdirs/shapes

Pixel space (32x32 RGB folded into 16x16x12 patches, no learned autoencoder), 4.7M parameters in all (4.5M
without the text pooling), a word-level tokenizer over the 18 words of the shapes captions and a 2-layer
CLIP-style text encoder kept at its random initialisation (as SD keeps CLIP frozen); the UNet also pools the
text into its timestep embedding, which its ResNets apply as a scale and shift (diffusers'
addition_embed_type="text", resnet_time_scale_shift="scale_shift"; SD reads the text only through
cross-attention); v-prediction;
training timesteps drawn logit-normally around t = 300 rather than uniformly; the loss weights the 2x2 cells
that changed since the previous frame 5x, and the cells of the object (not the background colour) 5x more;
a quarter of the tuples are a clip's first step (the only one where just the caption says which way the object
moves), trained near pure noise, where the noisy frame cannot give the move away.
3600 steps at batch 16: on a 2-core CPU the step compiles in 30-90 s and runs at 0.34-0.55 s on a normal day
(0.61-0.88 s on a slow one): 29 minutes at 0.48 s; at the end it writes `samples/final.gif` and `eval.json`
with the shapes-world scores. Measured (README, "The default run", 2026-12-06): background and object colour
1.00, shape 0.71 (chance 0.33), initial direction 0.50 (chance 0.25), 0.92 px/frame (true: 1), frames right 0.32.

Quick check of the whole loop (a minute): --config.train.num_steps=20
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        name="shapes", split="train", size=32, num_frames=16, stride_range=(1, 1), tfds_name="", data_dir="",
        start_fraction=0.25,
    ))
    # start_fraction: the share of tuples forced to be the first step (frame 1 from frame 0; uniform gives 1/15).
    # Only there must the text say which way the object goes: later the reference minus the anchor shows the
    # motion, and the model continues it (given 3 true frames and a caption naming another direction, it follows
    # the frames 0.81, the caption 0.06). Alone it did not teach the direction (0.3: 0.23, chance 0.25); with
    # objective.start_t_logit_normal it does: 0.25 gives direction 0.50, shape 0.71; 0.5 gives 0.54, 0.42 (README).

    c.model = ml_collections.ConfigDict()
    c.model.pretrained = ""  # a diffusers SD directory; empty: train from scratch as below
    c.model.autoencoder = "pixels"
    c.model.patch = 2  # 32x32x3 frames <-> 16x16x12 latents, exactly
    c.model.unet = dict(
        block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1, num_heads=4, norm_num_groups=16,
        # The pooled text joins the timestep embedding; the ResNets scale and shift their features with it.
        # Against SD's additive, text-free embedding (same seed and steps): shape 0.83 / 0.79, frames right
        # 0.45 / 0.35, one object 0.54 / 0.48, colour distance 18 / 20, speed 0.95 / 1.04 (README).
        addition_embed_type="text", addition_embed_type_num_heads=4, resnet_time_scale_shift="scale_shift",
    )
    c.model.text = dict(hidden_size=64, num_layers=2, num_heads=4, max_length=12)
    c.model.artv = dict(num_ref_frames=1, adapter_num_res_blocks=1, adapter_downscale_factor=1,
                        mask_init_bias=4.0, anchor_attention=False, anchor_timestep=0)
    c.model.use_mask = True  # ablation switch: False forces m = 1 (no masked diffusion)
    c.model.use_anchor = True  # ablation switch: False feeds a zero anchor

    # DDPM's linear schedule with v-prediction (pixel space at 32x32). With epsilon prediction the same 1000
    # steps give a model whose deterministic DDIM samples drift into noise (x0 estimates of +-70 at high noise);
    # v-prediction bounds the x0 estimate and the frames come out readable (README, "The default run").
    c.schedule = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                      prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True, steps_offset=0)

    # unmasked_weight: the plain diffusion loss on the UNet's own prediction, added to the masked loss. A
    # pretrained SD UNet already denoises; this scratch one must learn to, or the mask (which soon copies the
    # static background) starves it and text-to-video frame 0 fails. p_ref 0.3 trains that frame more.
    # change_weight: positions that changed since the previous frame count 1 + 4 = 5 times in the loss; a
    # 1-pixel move changes ~2% of the pixels, and without it the object does not move (README, "The default run").
    # foreground_weight: positions of the object (not the frame's background colour) count 4 more, in every frame:
    # the outline that makes the shape is a few percent of the plain loss; without it shape 0.35, with it 0.79.
    c.objective = dict(s_max=0.1, p_text=0.1, p_ref=0.3, unmasked_weight=1.0, change_weight=4.0,
                       foreground_weight=4.0, t_logit_normal=(-0.85, 1.2),
                       start_t_logit_normal=(3.0, 0.8))
    # t_logit_normal: t = 1000 * sigmoid(-0.85 + 1.2 n), median 300: 38% of the steps on t 200-450 (uniform: 25%),
    # the noise levels where sampling decides the object's outline. Against uniform t, same seed and steps:
    # shape 0.35 / 0.31, frames right 0.27 / 0.21, colour distance 23 / 30, speed 1.24 / 0.99 (README).
    # start_t_logit_normal: the first steps' own timesteps (those with references), t = 1000 * sigmoid(3 + 0.8 n),
    # median 953. Below t ~ 600 the noisy frame shows which way the object went and the model learns to read
    # that instead of the caption; near pure noise only the caption can say it. Without it direction 0.25.

    c.train = ml_collections.ConfigDict(dict(
        num_steps=3600, global_batch=16, learning_rate=1e-3, warmup_steps=200, final_lr_fraction=0.1,
        weight_decay=0.0, grad_clip=1.0, ema_decay=0.998, grad_accum=1, remat=False,
        compute_dtype="float32",
        # The text encoder stays at its random initialisation: trained jointly it collapses the direction words,
        # which pay only on first steps (trained, start_fraction 0.35: the word moved the first step's x0 by 0.0003).
        trainable=("artv",),
    ))

    c.mesh = dict(shape=(-1, 1),
                  rules=(("batch", ("data", "fsdp")), ("out", "fsdp"), ("vocab", "fsdp")))

    c.checkpoint = dict(every=900, max_to_keep=2, async_save=True)
    c.log_every = 100
    c.compilation_cache = "~/.cache/artv_jax/xla"  # JAX's persistent compilation cache; "" leaves it off

    c.sample = ml_collections.ConfigDict(dict(
        every=0,  # also sample every N steps (0: only at the end)
        at_end=True,
        num_frames=32, num_steps=25, eta=0.0, text_guidance=2.0, ref_guidance=1.0, ref_level=0.02, chunk_size=8,
        prompts=("a red square moving right on a black background",
                 "a yellow circle moving down on a gray background",
                 "a blue triangle moving left on a white background"),
    ))
    c.eval = dict(num_videos=48, num_frames=16, batch=16, num_steps=20)
    return c
