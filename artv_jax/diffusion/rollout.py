"""Own-rollout references: training tuples whose references are the model's own generated frames.

Teacher forcing trains every frame on true references, but sampling feeds the
model its own frames, whose small errors it has never seen and so compounds
(exposure bias: grain that grows, ghost trails, a drifting position). Self
Forcing and CausVid train on the model's own rollouts instead. This is the
simple form of that idea for a world whose continuation is known:

    window = the R + K true frames before the target (oldest first), latents
    for k in 1 .. K:   frame = sampler.denoise_frame(stop_gradient(params), window's last R, ...)
                       window position R + k - 1 := frame          (unless it is the clip's first frame)
    references = the window's last R frames                        # the model's own, K generation deep
    target     = the true frame                                    # unchanged

The rollout is the sampler's own DDIM (`Sampler.denoise_frame`, few steps,
the run's guidance and reference level), inside the jitted step, without
gradient. The target stays the true frame: in the shapes world the clip is
the deterministic continuation of its frame 0 and caption, so the loss pulls
a drifted history back onto the true track. On real video (WebVid) the true
continuation of a generated history is not known: there the mode needs a
distribution-matching loss against a frozen teacher (Self Forcing's DMD),
which this module does not provide; `configs/webvid.py` leaves it off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from artv_jax.diffusion.sampling import Sampler


def own_references(sampler: Sampler, params, key, window, anchor, text, uncond, target_index, stride,
                   num_ref_frames: int, ctx=None) -> jax.Array:
    """The last R frames of `window` after the model regenerated its last K = (frames - R) frames.

    Args:
      sampler: the model, schedule and the rollout's sampling settings (its `generate`-time twin).
      params: the ART·V params (gradient is stopped here).
      key: PRNG key; generation k (0-based) uses `fold_in(key, k)`.
      window: (B, H, W, (R + K)·C) clean latents of the true frames before the target, oldest first.
      anchor: (B, H, W, C) frame 0's latent.
      text, uncond: (B, L, D) the caption's and the empty caption's embeddings.
      target_index, stride: (B,) int32, the target's frame index and the clip's frame stride; window position
        p holds frame `target_index - stride · (R + K - p)`, which is the clip's first frame (kept, never
        generated: sampling is given or draws it separately) where that is < stride.
      num_ref_frames: R.
      ctx: the anchor's attention contexts where the model uses anchor attention.

    Returns:
      (B, H, W, R·C): the references, oldest first.
    """
    params = jax.lax.stop_gradient(params)
    c = sampler.model.latent_channels
    frames = window.shape[-1] // c
    k_total = frames - num_ref_frames
    if k_total < 0 or window.shape[-1] != frames * c:
        raise ValueError(f"window has {window.shape[-1]} channels, not (R + K) x {c} with R = {num_ref_frames}.")
    slots = [window[..., p * c:(p + 1) * c] for p in range(frames)]
    for k in range(k_total):
        p = num_ref_frames + k  # the window position generated now, from the R before it
        refs = jnp.concatenate(slots[p - num_ref_frames:p], axis=-1)
        frame = sampler.denoise_frame(params, jax.random.fold_in(key, k), text, uncond, refs, anchor, ctx)
        index = target_index - stride * (frames - p)
        generated = (index >= stride)[:, None, None, None]
        slots[p] = jnp.where(generated, jax.lax.stop_gradient(frame), slots[p])
    return jnp.concatenate(slots[-num_ref_frames:], axis=-1)
