"""ART·V's masked-diffusion objective: the mask blend, its loss, noise augmentation and conditioning dropout.

    x_t = schedule.add_noise(x0, noise, t)
    refs_aug, level = augment_references(schedule, k_aug, refs, s_max)
    drop_text, drop_ref = drop_conditioning(k_drop, p_text, p_ref, batch)
    pred, logits = model.apply(..., x_t, t, apply_text_drop(text, empty, drop_text), refs_aug, anchor, level,
                               drop_refs=drop_ref)
    mask = apply_ref_drop(mask_from_logits(logits), drop_ref)
    loss, metrics = masked_loss(schedule, pred, mask, x_t, t, x_ref, schedule.training_target(x0, noise, t))

The network's prediction of the new frame is blended with the clean previous
frame x_ref by a per-pixel mask m in [0, 1] (B, H, W, 1), in x0 space:

    x̂0 = m · x̂0_θ + (1 − m) · x_ref

For ε-prediction this is the paper's ε̂ = m · ε_θ + (1 − m) · ε_ref with the
static noise ε_ref = (x_t − √ᾱ_t · x_ref) / √(1 − ᾱ_t). Every parameterisation
p ∈ {ε, v} is affine in x0 given (x_t, t), so the x0 blend is the same blend of
p: p̂ = m · p_θ + (1 − m) · p_ref, where p_ref is the output that implies x0 =
x_ref (`reference_output`). `blend_prediction` computes it in that form: exact
at m = 1 (p̂ = p_θ) and without dividing by √ᾱ_t. All math is float32 (inputs
may be bf16); arrays are NHWC with per-example (B,) timesteps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from artv_jax.diffusion.schedule import NoiseSchedule

# ---------------------------------------------------------------- the blend

def mask_from_logits(logits) -> jax.Array:
    """m = sigmoid(logits), float32."""
    return jax.nn.sigmoid(jnp.asarray(logits, jnp.float32))


def static_noise(schedule: NoiseSchedule, x_t, x_ref, t) -> jax.Array:
    """ε_ref = (x_t − √ᾱ_t · x_ref) / √(1 − ᾱ_t): the noise that takes x_ref to x_t at timestep t."""
    return schedule.eps_from_x0(x_t, x_ref, t)


def reference_output(schedule: NoiseSchedule, x_t, x_ref, t) -> jax.Array:
    """p_ref: the network output (ε or v, per prediction_type) that implies x0 = x_ref at x_t.

    ε: ε_ref = (x_t − √ᾱ_t · x_ref) / √(1 − ᾱ_t);   v: v_ref = (√ᾱ_t · x_t − x_ref) / √(1 − ᾱ_t).
    """
    return schedule.output_from_x0(x_t, x_ref, t)


def blend_prediction(schedule: NoiseSchedule, pred, mask, x_t, t, x_ref) -> jax.Array:
    """The blended network output p̂ = m · p_θ + (1 − m) · p_ref in the model's parameterisation.

    Equals `schedule.output_from_x0(x_t, blend_x0(...), t)` (the x0-space
    blend), computed without the round trip. Use it for the loss and in samplers.

    Args:
      schedule: the noise schedule (its prediction_type says what `pred` is).
      pred: (B, H, W, C) the network's raw output p_θ (ε or v).
      mask: (B, H, W, 1) m in [0, 1] (1: trust the network, 0: copy x_ref).
      x_t: (B, H, W, C) the noisy latent the network saw.
      t: (B,) int timesteps.
      x_ref: (B, H, W, C) the clean latent of the previous frame.
    """
    pred, mask = jnp.asarray(pred, jnp.float32), _check_mask(mask, pred)
    return mask * pred + (1.0 - mask) * reference_output(schedule, x_t, x_ref, t)


def blend_x0(schedule: NoiseSchedule, pred, mask, x_t, t, x_ref) -> jax.Array:
    """x̂0 = m · x̂0_θ + (1 − m) · x_ref, with x̂0_θ the x0 implied by the raw output `pred`."""
    mask = _check_mask(mask, pred)
    x0_theta, _ = schedule.to_x0_eps(pred, x_t, t)
    return mask * x0_theta + (1.0 - mask) * jnp.asarray(x_ref, jnp.float32)


def blend_eps(schedule: NoiseSchedule, eps_theta, mask, x_t, t, x_ref) -> jax.Array:
    """The paper's form ε̂ = m · ε_θ + (1 − m) · ε_ref (ε_θ: an ε prediction, whatever prediction_type is)."""
    eps_theta, mask = jnp.asarray(eps_theta, jnp.float32), _check_mask(mask, eps_theta)
    return mask * eps_theta + (1.0 - mask) * static_noise(schedule, x_t, x_ref, t)


def masked_loss(schedule: NoiseSchedule, pred, mask, x_t, t, x_ref, target, weight=None, pixel_weight=None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE between the blended prediction and the target, and metrics.

        loss = mean_b w_b · mean_{h,w,c} w_bhw · (p̂ − target)²     (w = 1 where not given)

    Args:
      schedule, pred, mask, x_t, t, x_ref: as in `blend_prediction`.
      target: (B, H, W, C) `schedule.training_target(x0, noise, t)` (ε or v).
      weight: optional (B,) per-example weights (e.g. min-SNR); the mean is
        still over B, so weights of 1 give the plain mean.
      pixel_weight: optional (B, H, W, 1) per-position weights (e.g.
        `weighting.pixel_weights`), applied to every channel; the mean is still over
        H, W, C, so weights of 1 give the plain mean.

    Returns:
      (loss, metrics): loss a float32 scalar; metrics "loss" (same), "loss_raw"
      (the same MSE of the unblended output p_θ, equally weighted) and
      "mask_mean" (the mean of m as given, dropped examples included).
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}.")
    blended = blend_prediction(schedule, pred, mask, x_t, t, x_ref)
    axes = tuple(range(1, pred.ndim))
    w = 1.0 if pixel_weight is None else _check_mask(pixel_weight, pred, "pixel_weight")
    per_example = jnp.mean(w * (blended - target) ** 2, axis=axes)
    per_example_raw = jnp.mean(w * (pred - target) ** 2, axis=axes)
    if weight is not None:
        weight = jnp.asarray(weight, jnp.float32)
        if weight.shape != per_example.shape:
            raise ValueError(f"weight must have shape {per_example.shape} (one per example), got {weight.shape}.")
        per_example, per_example_raw = weight * per_example, weight * per_example_raw
    loss = jnp.mean(per_example)
    metrics = {"loss": loss, "loss_raw": jnp.mean(per_example_raw),
               "mask_mean": jnp.mean(jnp.asarray(mask, jnp.float32))}
    return loss, metrics


def _check_mask(mask, like, name: str = "mask") -> jax.Array:
    """A per-position map (the mask, or loss weights) as float32, checked to be (B, H, W, 1) (or already
    like-shaped) against `like` (B, H, W, C); errors call it `name`."""
    mask = jnp.asarray(mask, jnp.float32)
    shape = jnp.shape(like)
    if mask.ndim != len(shape) or mask.shape[:-1] != shape[:-1] or mask.shape[-1] not in (1, shape[-1]):
        raise ValueError(f"{name} must have shape {shape[:-1] + (1,)} for a prediction of shape {shape}, "
                         f"got {mask.shape}.")
    return mask


# ------------------------------------------------------------ noise augmentation

def augment_at_level(schedule: NoiseSchedule, refs, noise, level) -> jax.Array:
    """Reference latents noised to level s in [0, 1] by the forward process: √ᾱ(s) · refs + √(1 − ᾱ(s)) · noise.

    ᾱ(s) is `schedule.alpha_bar_at_level`: s = 0 returns refs unchanged,
    s = (t + 1) / T equals timestep t, s = 1 the last timestep.

    Args:
      refs: (B, H, W, R·C) the clean reference latents (several frames stacked on channels).
      noise: standard normal noise like refs.
      level: a scalar or (B,) noise levels s.
    """
    refs = jnp.asarray(refs, jnp.float32)
    a = jnp.asarray(schedule.alpha_bar_at_level(level))
    a = a.reshape(a.shape + (1,) * (refs.ndim - a.ndim))
    return jnp.sqrt(a) * refs + jnp.sqrt(1.0 - a) * jnp.asarray(noise, jnp.float32)


def augment_references(schedule: NoiseSchedule, key, refs, s_max, p_full: float = 0.0
                       ) -> tuple[jax.Array, jax.Array]:
    """Training-time noise augmentation: per-example s ~ U[0, s_max], refs noised to s.

    The level s is a fraction of the forward process in [0, 1] (see
    `augment_at_level`), the same number the adapter receives as its constant
    input plane (`models.adapter.noise_level_plane`) and the sampler uses as
    its fixed `s_infer`.

    `p_full`: the probability that an example's level is drawn from U[0, 1] instead, so the model also learns
    from histories at every noise level, the weaker branch of fractional history guidance (`sampling`;
    Diffusion Forcing trains every frame at an independent level). 0 draws exactly what it drew without it.

    Returns:
      (noisy refs (B, H, W, R·C) float32, levels s (B,) float32).
    """
    if isinstance(s_max, (int, float)) and not 0.0 <= s_max <= 1.0:
        raise ValueError(f"s_max is a fraction of the forward process and must be in [0, 1], got {s_max}.")
    refs = jnp.asarray(refs, jnp.float32)
    k_level, k_noise = jax.random.split(key)
    level = jax.random.uniform(k_level, (refs.shape[0],), jnp.float32) * s_max
    if p_full:
        k_full, k_which = jax.random.split(jax.random.fold_in(k_level, 1))
        full = jax.random.uniform(k_full, (refs.shape[0],), jnp.float32)
        level = jnp.where(jax.random.uniform(k_which, (refs.shape[0],)) < p_full, full, level)
    noise = jax.random.normal(k_noise, refs.shape, jnp.float32)
    return augment_at_level(schedule, refs, noise, level), level


# ------------------------------------------------------------ conditioning dropout

def drop_conditioning(key, p_text, p_ref, batch: int) -> tuple[jax.Array, jax.Array]:
    """Independent per-example dropout decisions: (drop_text (B,) bool, drop_ref (B,) bool).

    drop_text is True with probability p_text (the caption becomes the empty
    prompt), drop_ref with probability p_ref (references and anchor removed:
    adapter features zero, m := 1); the two are independent.
    """
    for name, p in (("p_text", p_text), ("p_ref", p_ref)):
        if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
    k_text, k_ref = jax.random.split(key)
    drop_text = jax.random.uniform(k_text, (batch,)) < p_text
    drop_ref = jax.random.uniform(k_ref, (batch,)) < p_ref
    return drop_text, drop_ref


def apply_text_drop(text, empty, drop_text) -> jax.Array:
    """Text embeddings (B, L, D) with the dropped examples' replaced by the empty-prompt embedding ((L, D) or (B, L, D))."""
    text = jnp.asarray(text)
    empty = jnp.broadcast_to(jnp.asarray(empty, text.dtype), text.shape)
    return jnp.where(jnp.asarray(drop_text)[:, None, None], empty, text)


def apply_ref_drop(mask, drop_ref) -> jax.Array:
    """The mask with m := 1 for examples whose references are dropped (mask (B, H, W, 1), drop_ref (B,) bool).

    Also used for `change_weight_map`'s loss weights: 1 where there is no previous frame to change from.
    """
    mask = jnp.asarray(mask, jnp.float32)
    drop_ref = jnp.asarray(drop_ref)
    return jnp.where(drop_ref.reshape(drop_ref.shape + (1,) * (mask.ndim - drop_ref.ndim)), 1.0, mask)
