"""Every key of a run's configuration and its default, in one place, and the one check of a config against them.

    c = config.defaults()         # what configs/*.py start from; they change a few fields
    c = config.validate(c)        # once, at start-up: complete, type-checked, value-checked, locked

`validate` fills the keys a config leaves out with their defaults (so a
checkpoint written before a key existed loads with the behaviour it was
trained with) and raises a one-line `ValueError` naming the key for an
unknown key, a value of the wrong type, or a value out of range. The code
reads attributes of the validated config, never `.get(key, default)`.

Why a ConfigDict of defaults rather than dataclasses: `--config.a.b=value`
overrides, `config_flags` locking and checkpoints' `config.json` all speak
ConfigDict, and one tree of defaults keeps the whole schema on one screen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections

from artv_jax.data.shapes import VOCABULARY as SHAPES_VOCABULARY
from artv_jax.models.artv import ArtVConfig

ConfigDict = ml_collections.ConfigDict


def defaults() -> ConfigDict:
    """The default of every key. Neutral: pure ART·V (no shapes-world loss terms), one device, the shapes data."""
    c = ConfigDict()
    c.seed = 0

    c.data = ConfigDict(dict(
        name="shapes",  # "shapes" (embedded, generated) or "webvid" (a TFDS data set, `tfds_name`)
        split="train", size=32, num_frames=16,
        stride_range=(1, 1),  # frame strides drawn uniformly from this closed range
        tfds_name="", data_dir="",
        start_fraction=0.0,  # share of tuples forced to be a clip's first step (0: as they fall, 1 in num_frames-1)
        bounce_fraction=0.0,  # shapes world, stride 1: share of tuples put on a bounce step (pipeline.training_tuple)
    ))

    c.model = ConfigDict()
    c.model.pretrained = ""  # a diffusers SD 1.x/2.x directory; empty: a scratch model as below
    c.model.autoencoder = "pixels"  # scratch models: frames folded into pixel patches (exact, no learned VAE)
    c.model.patch = 1  # pixel patch size: an SxSx3 frame is an (S/p)x(S/p)x3p² latent
    c.model.unet = ConfigDict(dict(
        block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1, num_heads=4, norm_num_groups=16,
        addition_embed_type="",  # "text": the pooled text joins the timestep embedding (diffusers' option)
        addition_embed_type_num_heads=64,
        resnet_time_scale_shift="default",  # "scale_shift": ResNets apply the embedding as a scale and shift
    ))
    c.model.text = ConfigDict(dict(
        hidden_size=64, num_layers=2, num_heads=4, max_length=12,
        vocabulary=tuple(SHAPES_VOCABULARY),  # the word-level tokenizer's words (scratch models)
    ))
    c.model.artv = ConfigDict(dataclasses.asdict(ArtVConfig()))  # what ART·V adds to the UNet (models/artv.py)
    c.model.use_mask = True  # ablation switch: False forces m = 1 (no masked diffusion)
    c.model.use_anchor = True  # ablation switch: False feeds a zero anchor

    # Scratch models' noise schedule (a pretrained base brings its own), in diffusers' DDIMScheduler terms.
    c.schedule = ConfigDict(dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                 beta_end=0.02, prediction_type="epsilon", clip_sample=False,
                                 set_alpha_to_one=True, steps_offset=0))

    c.objective = ConfigDict(dict(
        s_max=0.2,  # noise augmentation of the references: levels uniform in [0, s_max]
        p_text=0.1, p_ref=0.1,  # conditioning dropout (classifier-free guidance)
        unmasked_weight=0.0,  # + this x the plain diffusion loss on the unblended prediction
        change_weight=0.0,  # shapes world: cells that changed since the reference count 1 + w
        foreground_weight=0.0,  # shapes world: cells off the background colour count 1 + w more
        t_logit_normal=(),  # (): uniform timesteps; (loc, scale): logit-normal
        start_t_logit_normal=(),  # (loc, scale): a clip's first steps draw their own timesteps
        loss_space="output",  # "output": MSE of what the network predicts; "v": its error counted in v
        # Own rollouts (diffusion/rollout.py): the references of `rollout_fraction` of the tuples are the
        # model's own frames, regenerated `rollout_frames` deep (0: teacher forcing) with `rollout_steps` DDIM
        # steps, from step `rollout_start` on; the target stays the true frame (the shapes world; not WebVid).
        rollout_frames=0, rollout_fraction=0.25, rollout_steps=4, rollout_start=0,
        p_history_noise=0.0,  # share of tuples whose references are noised to a level in U[0, 1], not [0, s_max]
    ))

    c.train = ConfigDict(dict(
        num_steps=1000, global_batch=16, learning_rate=1e-4, warmup_steps=100, final_lr_fraction=0.1,
        adam_b2=0.999, weight_decay=0.0, grad_clip=1.0, ema_decay=0.999, grad_accum=1,
        remat=False,  # rematerialise the UNet blocks (memory for compute)
        compute_dtype="float32",  # "bfloat16": bf16 compute over fp32 master weights
        trainable=("artv",),  # '/'-path prefixes of the parameters to train; the rest stays frozen
    ))

    # Stage 1 of a scratch model: a text-to-image UNet (as config.model describes it, without ART·V's mask
    # channel) trained on single frames and their captions, written to <workdir>/image_base as a diffusers-format
    # directory; ART·V (stage 2, `train`) then starts from it through model.pretrained, as from Stable Diffusion.
    # The text encoder stays at its initialisation (it is not trained in either stage). 0 steps: no stage 1.
    c.image_base = ConfigDict(dict(num_steps=0, global_batch=32, learning_rate=1e-3, warmup_steps=200,
                                   ema_decay=0.998, p_text=0.1,
                                   t_logit_normal=(),  # (): uniform timesteps, as Stable Diffusion trains
                                   eval_images=48))  # text-to-image samples scored at the end (0: none)

    c.mesh = ConfigDict(dict(
        shape=(-1, 1),  # ('data', 'fsdp'); -1 takes the remaining devices
        rules=(("batch", ("data", "fsdp")), ("out", "fsdp"), ("vocab", "fsdp")),  # logical axis -> mesh axes
    ))

    c.checkpoint = ConfigDict(dict(every=1000, max_to_keep=2, async_save=True))
    c.log_every = 100
    c.progress = True  # a progress bar on process 0
    c.compilation_cache = "~/.cache/artv_jax/xla"  # JAX's persistent compilation cache; "" leaves it off

    c.sample = ConfigDict(dict(
        every=0,  # also sample every N steps (0: only at the end)
        at_end=True, num_frames=16, num_steps=25, eta=0.0, text_guidance=2.0, ref_level=0.02,
        ref_guidance=1.0,  # history guidance (1: off), against no history or, below 1, history_level's
        history_level=1.0,
        chunk_size=8, prompts=("a red square moving right on a black background",),
    ))
    # End-of-training shapes-world scores: text-to-video of the first `num_videos` test captions (0: none).
    c.eval = ConfigDict(dict(num_videos=0, num_frames=16, batch=16, num_steps=20))
    return c


def validate(config: Mapping | ConfigDict) -> ConfigDict:
    """The complete, checked, locked config: `defaults()` overlaid with `config`.

    Raises ValueError (one line, naming the key) on an unknown key, a wrong
    type or a value out of range.
    """
    merged = defaults()
    _overlay(merged, config, "")
    _check_values(merged)
    merged.lock()
    return merged


def _overlay(base: ConfigDict, override: Mapping | ConfigDict, prefix: str) -> None:
    for key, value in override.items():
        name = prefix + key
        if key not in base:
            raise ValueError(f"config key {name!r} is unknown; {prefix.rstrip('.') or 'the config'} has "
                             f"{sorted(base.keys())}.")
        if isinstance(base[key], ConfigDict):
            if not isinstance(value, (Mapping, ConfigDict)):
                raise ValueError(f"config key {name!r} is a section, got {_one_line(value)}.")
            _overlay(base[key], value, name + ".")
            continue
        value = _tuples(value)
        if value is None and base[key] == "":  # JSON of older configs: None for "not set"
            value = ""
        try:
            base[key] = value
        except TypeError:
            raise ValueError(f"config key {name!r} must be {type(base[key]).__name__} like its default "
                             f"{base[key]!r}, got {_one_line(value)}.") from None


def _one_line(value) -> str:
    return " ".join(repr(value).split())


def _tuples(value):
    """Lists (as JSON gives them back) -> tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _check_values(c: ConfigDict) -> None:
    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            value = c
            for part in key.split("."):
                value = value[part]
            raise ValueError(f"config key {key!r} {what}, got {_one_line(value)}.")

    require(c.data.name in ("shapes", "webvid"), "data.name", "must be 'shapes' or 'webvid'")
    require(c.data.name == "shapes" or bool(c.data.tfds_name), "data.tfds_name", "must name a TFDS data set")
    require(0.0 <= c.data.start_fraction <= 1.0, "data.start_fraction", "must be in [0, 1]")
    require(0.0 <= c.data.bounce_fraction <= 1.0, "data.bounce_fraction", "must be in [0, 1]")
    require(c.data.bounce_fraction == 0.0 or (c.data.name == "shapes" and tuple(c.data.stride_range) == (1, 1)),
            "data.bounce_fraction", "needs the shapes world at data.stride_range (1, 1)")
    lo, hi = (tuple(c.data.stride_range) + (0, 0))[:2]
    require(len(c.data.stride_range) == 2 and 1 <= lo <= hi, "data.stride_range", "must be (lo, hi) with 1 <= lo <= hi")
    require(c.data.size > 0 and c.data.num_frames >= 2, "data.num_frames", "must be >= 2 (with data.size > 0)")
    require(bool(c.model.pretrained) or c.model.autoencoder == "pixels", "model.autoencoder",
            "must be 'pixels' for a scratch model (a pretrained base brings its VAE)")
    require(c.model.patch >= 1 and c.data.size % c.model.patch == 0, "model.patch", "must divide data.size")
    require(c.model.unet.addition_embed_type in ("", "text"), "model.unet.addition_embed_type",
            "must be '' or 'text'")
    for key in ("t_logit_normal", "start_t_logit_normal"):
        v = c.objective[key]
        require(len(v) == 0 or (len(v) == 2 and v[1] > 0), f"objective.{key}", "must be () or (loc, scale > 0)")
    require(c.objective.loss_space in ("output", "v"), "objective.loss_space", "must be 'output' or 'v'")
    for key in ("p_text", "p_ref"):
        require(0.0 <= c.objective[key] <= 1.0, f"objective.{key}", "must be in [0, 1]")
    for key in ("s_max", "unmasked_weight", "change_weight", "foreground_weight"):
        require(c.objective[key] >= 0.0, f"objective.{key}", "must be >= 0")
    require(c.objective.rollout_frames >= 0, "objective.rollout_frames", "must be >= 0")
    require(0.0 < c.objective.rollout_fraction <= 1.0, "objective.rollout_fraction", "must be in (0, 1]")
    require(c.objective.rollout_steps >= 1, "objective.rollout_steps", "must be >= 1")
    require(c.objective.rollout_start >= 0, "objective.rollout_start", "must be >= 0")
    require(0.0 <= c.objective.p_history_noise <= 1.0, "objective.p_history_noise", "must be in [0, 1]")
    require(c.sample.ref_level <= c.sample.history_level <= 1.0, "sample.history_level",
            "must be in [sample.ref_level, 1]")
    require(c.image_base.num_steps >= 0, "image_base.num_steps", "must be >= 0")
    require(c.image_base.global_batch > 0, "image_base.global_batch", "must be positive")
    require(0.0 <= c.image_base.p_text <= 1.0, "image_base.p_text", "must be in [0, 1]")
    v = c.image_base.t_logit_normal
    require(len(v) == 0 or (len(v) == 2 and v[1] > 0), "image_base.t_logit_normal", "must be () or (loc, scale > 0)")
    require(c.train.num_steps > 0, "train.num_steps", "must be positive")
    # config_flags reads --config.train.trainable=artv as the tuple of its characters ('a', 'r', 't', 'v'),
    # which would train every parameter whose path starts with 'a': refuse one-character groups.
    require(all(len(p) > 1 for p in c.train.trainable), "train.trainable",
            "must be a tuple of parameter paths such as ('artv',) (one-character entries: a string was split)")
    require(c.train.grad_accum >= 1 and c.train.global_batch % c.train.grad_accum == 0, "train.grad_accum",
            f"must be >= 1 and divide train.global_batch={c.train.global_batch}")
    require(c.train.compute_dtype in ("float32", "bfloat16", "float16"), "train.compute_dtype",
            "must be float32, bfloat16 or float16")
    require(len(c.train.trainable) > 0, "train.trainable", "must name at least one parameter group")
    require(len(c.mesh.shape) == 2, "mesh.shape", "must be (data, fsdp)")
    require(c.checkpoint.every > 0, "checkpoint.every", "must be positive")
    require(c.log_every > 0, "log_every", "must be positive")
    require(c.sample.num_steps > 0 and c.eval.num_steps > 0, "sample.num_steps",
            "must be positive (and eval.num_steps too)")
    require(c.eval.num_videos >= 0 and c.eval.batch > 0, "eval.num_videos", "must be >= 0 (and eval.batch > 0)")
