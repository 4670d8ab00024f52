"""How much each training tuple and each position counts: timestep densities and per-position loss weights.

    w = tuple_weighting(key, batch, config.objective, schedule.num_train_timesteps, autoencoder.factor, drop_ref)
    x_t = schedule.add_noise(x0, noise, w.timesteps)
    loss, metrics = masked.masked_loss(..., pixel_weight=w.pixel_weight)

ART·V trains with uniform timesteps and a plain MSE. The options here are
ours, for a model trained from scratch on the shapes world (every one is off
by default, `artv_jax.config`): SD3's logit-normal timestep density, a
density of its own for a clip's first steps, and loss weights on the 2x2
cells that changed since the previous frame or that hold the object. The
pixel weights read uint8 frames against a flat background colour: they are
for the shapes world, not natural video.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from artv_jax.diffusion.masked import apply_ref_drop


class Weighting(NamedTuple):
    timesteps: jax.Array  # (B,) int32 training timesteps
    pixel_weight: jax.Array | None  # (B, h, w, 1) float32 loss weights on the latent grid, or None (all ones)


def tuple_weighting(key, batch: dict, objective, num_train_timesteps: int, factor: int, drop_ref) -> Weighting:
    """The timesteps and the per-position loss weights of one (micro)batch of training tuples.

    Args:
      key: PRNG key of the timestep draw.
      batch: the tuple pipeline's batch: target (B, H, W, 3) and refs (B, R, H, W, 3) uint8; frame_index and
        stride (B,) int32 where `objective.start_t_logit_normal` is set.
      objective: the config's `objective` section.
      num_train_timesteps: T of the noise schedule.
      factor: the autoencoder's downsampling factor (latent cell = factor x factor pixels).
      drop_ref: (B,) bool, tuples whose references are dropped (text-only frames).
    """
    t = tuple_timesteps(key, batch, num_train_timesteps, objective, drop_ref)
    return Weighting(t, pixel_weights(batch, objective, factor, drop_ref))


# ------------------------------------------------------------------ timesteps

def training_timesteps(key, batch: int, num_train_timesteps: int, logit_normal=None) -> jax.Array:
    """(batch,) int32 timesteps to train on: uniform over 0 … T-1, or logit-normal.

    logit_normal: None or () (uniform), or (loc, scale): t = ⌊T · sigmoid(loc + scale · n)⌋ with n ~ N(0, 1),
    the timestep density of Stable Diffusion 3 ("Scaling rectified flow transformers", Esser et al. 2024),
    which spends the steps on the middle noise levels, where the outline of an object is decided, rather
    than on the nearly clean and the nearly pure-noise ends. loc = logit(q) centres it at t = q · T.
    """
    if logit_normal is None or len(logit_normal) == 0:
        return jax.random.randint(key, (batch,), 0, num_train_timesteps)
    if len(logit_normal) != 2:
        raise ValueError(f"logit_normal must be () or (loc, scale), got {tuple(logit_normal)}.")
    loc, scale = (float(v) for v in logit_normal)
    if not scale > 0:
        raise ValueError(f"logit_normal scale must be positive, got {scale}.")
    u = jax.nn.sigmoid(loc + scale * jax.random.normal(key, (batch,), jnp.float32))
    return jnp.clip(jnp.floor(u * num_train_timesteps).astype(jnp.int32), 0, num_train_timesteps - 1)


def first_step(batch: dict) -> jax.Array:
    """(B,) bool: the tuple is its clip's first step (target one stride after frame 0, every reference frame 0).

    Needs the pipeline's `frame_index` and `stride` (`pipeline.training_tuple`).
    """
    missing = [k for k in ("frame_index", "stride") if k not in batch]
    if missing:
        raise ValueError(f"objective.start_t_logit_normal needs the batch's {missing} (the tuple pipeline's keys); "
                         f"the batch has {sorted(batch)}.")
    return jnp.asarray(batch["frame_index"]) == jnp.asarray(batch["stride"])


def tuple_timesteps(key, batch: dict, num_train_timesteps: int, objective, drop_ref=None) -> jax.Array:
    """(B,) int32 training timesteps: `objective.t_logit_normal` (() : uniform) for every tuple, except that
    with `objective.start_t_logit_normal` the clips' first steps draw theirs from that density instead
    (not those whose references are dropped, `drop_ref` (B,) bool: they are text-only frames).

    The first step is the one where only the text says which way the object
    moves. Below high noise x_t itself shows where the object went, and a model
    trained there learns to read x_t rather than the words; at the noise levels
    where x_t shows nothing, the words are the only way to lower the loss.
    """
    b = batch["target"].shape[0]
    t = training_timesteps(key, b, num_train_timesteps, objective["t_logit_normal"])
    start = objective["start_t_logit_normal"]
    if not start:
        return t
    t_start = training_timesteps(jax.random.fold_in(key, 1), b, num_train_timesteps, start)
    use_start = first_step(batch)
    if drop_ref is not None:
        use_start = use_start & ~jnp.asarray(drop_ref)
    return jnp.where(use_start, t_start, t)


# ------------------------------------------------------------- pixel weights

def pixel_weights(batch: dict, objective, factor: int, drop_ref) -> jax.Array | None:
    """(B, H/f, W/f, 1) loss weights from `objective.change_weight` and `objective.foreground_weight`, or None.

    Changed cells count 1 + change_weight (not in text-only frames, `drop_ref`: they have no previous frame to
    change from); object cells count foreground_weight more, in every frame.
    """
    pixel_weight = None
    if objective["change_weight"]:
        pixel_weight = apply_ref_drop(
            change_weight_map(batch["target"], batch["refs"][:, -1], factor, objective["change_weight"]), drop_ref)
    if objective["foreground_weight"]:
        fg = foreground_weight_map(batch["target"], factor, objective["foreground_weight"])
        pixel_weight = fg if pixel_weight is None else pixel_weight + (fg - 1.0)
    return pixel_weight


def change_weight_map(target_frames, ref_frames, factor: int, change_weight: float, threshold: int = 8
                      ) -> jax.Array:
    """Loss weights 1 + change_weight · [the frame changed there], on the latent grid: (B, H/f, W/f, 1).

    A pixel has changed when any channel differs from the previous frame by
    more than `threshold` (uint8 units); a latent position (an f x f pixel
    cell) has changed when any of its pixels has. The changes between
    consecutive frames are a few percent of the pixels (a 10-pixel square
    moving 1 px changes 20 of 1024), so the plain MSE hardly sees the motion
    it should learn; this weight makes it.

    Args:
      target_frames, ref_frames: (B, H, W, 3) uint8 (or integer) frames.
      factor: the autoencoder's downsampling factor f (H and W divisible by it).
      change_weight: the extra weight of a changed position (0: all ones).
      threshold: per-channel difference, in 0..255, above which a pixel changed.
    """
    if change_weight < 0:
        raise ValueError(f"change_weight must be >= 0, got {change_weight}.")
    target_frames, ref_frames = jnp.asarray(target_frames), jnp.asarray(ref_frames)
    if target_frames.shape != ref_frames.shape or target_frames.ndim != 4:
        raise ValueError(f"target and reference frames must both be (B, H, W, C), got {target_frames.shape} "
                         f"and {ref_frames.shape}.")
    diff = jnp.abs(target_frames.astype(jnp.int32) - ref_frames.astype(jnp.int32))
    return _cell_weights(jnp.max(diff, axis=-1) > threshold, factor, change_weight)


def foreground_weight_map(frames, factor: int, foreground_weight: float, threshold: int = 8) -> jax.Array:
    """Loss weights 1 + foreground_weight · [not background], on the latent grid: (B, H/f, W/f, 1).

    For flat-background data such as the shapes world: the background is
    each frame's per-channel median colour (it covers most of the frame), and
    a pixel is foreground when any channel differs from it by more than
    `threshold`; a latent position (an f x f cell) is foreground when any of
    its pixels is. A 10-pixel object is a tenth of a 32x32 frame, so the
    plain MSE is mostly background, which the model gets right early; the
    object's outline, which carries its shape, is a few percent of the loss.
    Meaningless for natural video (no flat background): leave it 0 there.

    Args:
      frames: (B, H, W, 3) uint8 (or integer) frames.
      factor: the autoencoder's downsampling factor f (H and W divisible by it).
      foreground_weight: the extra weight of a foreground position (0: all ones).
      threshold: per-channel difference from the background, in 0..255.
    """
    if foreground_weight < 0:
        raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}.")
    frames = jnp.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (B, H, W, C), got {frames.shape}.")
    b, h, w, c = frames.shape
    pixels = frames.astype(jnp.int32)
    background = jnp.median(pixels.reshape(b, h * w, c), axis=1)  # (B, C)
    foreground = jnp.max(jnp.abs(pixels - background[:, None, None, :].astype(jnp.int32)), axis=-1) > threshold
    return _cell_weights(foreground, factor, foreground_weight)


def _cell_weights(pixel_mask, factor: int, weight: float) -> jax.Array:
    """(B, H, W) bool pixels -> (B, H/f, W/f, 1) float32 weights 1 + weight · [any pixel of the f x f cell]."""
    b, h, w = pixel_mask.shape
    if h % factor or w % factor:
        raise ValueError(f"frames of {h}x{w} do not divide into {factor}x{factor} latent cells.")
    cells = pixel_mask.reshape(b, h // factor, factor, w // factor, factor).any(axis=(2, 4))
    return 1.0 + weight * cells[..., None].astype(jnp.float32)
