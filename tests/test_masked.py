"""`artv_jax.diffusion.masked`: the mask blend, its loss, noise augmentation and conditioning dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.diffusion import masked
from artv_jax.diffusion.schedule import NoiseSchedule

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
      "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]
TOL = {"rtol": 1e-5, "atol": 1e-5}
T = np.array([0, 1, 300, 700, 998, 999])  # both ends of the schedule


def _schedule(prediction_type):
    return NoiseSchedule.from_config({**SD, "prediction_type": prediction_type})


def _batch(seed, b=None, h=6, w=5, c=4):
    """x0, x_ref, noise, pred (B, H, W, C) and a mask (B, H, W, 1) in (0, 1); B = len(T) by default."""
    b = len(T) if b is None else b
    rng = np.random.default_rng(seed)
    x0, x_ref, noise, pred = (rng.standard_normal((b, h, w, c)).astype(np.float32) for _ in range(4))
    mask = rng.uniform(0.0, 1.0, (b, h, w, 1)).astype(np.float32)
    return x0, x_ref, noise, pred, mask


# ------------------------------------------------------------------ the blend

@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_mask_zero_predicts_the_reference(prediction_type):
    s = _schedule(prediction_type)
    x0, x_ref, noise, pred, _ = _batch(0)
    x_t = s.add_noise(x0, noise, T)
    zero = np.zeros(x0.shape[:-1] + (1,), np.float32)
    blended = masked.blend_prediction(s, pred, zero, x_t, T, x_ref)
    np.testing.assert_allclose(s.to_x0_eps(blended, x_t, T)[0], x_ref, **TOL)
    np.testing.assert_array_equal(masked.blend_x0(s, pred, zero, x_t, T, x_ref), x_ref)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_mask_one_is_the_network_output(prediction_type):
    s = _schedule(prediction_type)
    x0, x_ref, noise, pred, _ = _batch(1)
    x_t = s.add_noise(x0, noise, T)
    one = np.ones(x0.shape[:-1] + (1,), np.float32)
    np.testing.assert_array_equal(masked.blend_prediction(s, pred, one, x_t, T, x_ref), pred)
    np.testing.assert_array_equal(masked.blend_x0(s, pred, one, x_t, T, x_ref), s.to_x0_eps(pred, x_t, T)[0])


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_blend_forms_agree(prediction_type):
    """x0-space blend == blend of the output == (for ε) the paper's ε̂ = m ε_θ + (1 − m) ε_ref."""
    s = _schedule(prediction_type)
    x0, x_ref, noise, pred, mask = _batch(2)
    x_t = s.add_noise(x0, noise, T)
    blended = masked.blend_prediction(s, pred, mask, x_t, T, x_ref)
    x0_hat = masked.blend_x0(s, pred, mask, x_t, T, x_ref)
    np.testing.assert_allclose(s.output_from_x0(x_t, x0_hat, T), blended, **TOL)
    np.testing.assert_allclose(s.to_x0_eps(blended, x_t, T)[0], x0_hat, **TOL)
    eps_theta = s.to_x0_eps(pred, x_t, T)[1]
    eps_form = masked.blend_eps(s, eps_theta, mask, x_t, T, x_ref)
    # ε from a v blend goes through v_ref ~ x/√(1 − ᾱ_0) ≈ 34·x at t = 0: absolute error up to ~1e-5
    np.testing.assert_allclose(s.to_x0_eps(blended, x_t, T)[1], eps_form, rtol=1e-5, atol=5e-5)
    if prediction_type == "epsilon":
        np.testing.assert_allclose(eps_form, blended, **TOL)


def test_blend_in_float32_from_bf16():
    s = _schedule("v_prediction")
    x0, x_ref, noise, pred, mask = _batch(3)
    x_t = s.add_noise(x0, noise, T)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)
    out = masked.blend_prediction(s, bf(pred), bf(mask), bf(x_t), T, bf(x_ref))
    up = lambda a: np.asarray(bf(a).astype(jnp.float32))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, masked.blend_prediction(s, up(pred), up(mask), up(x_t), T, up(x_ref)))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_static_noise_inverts_add_noise(prediction_type):
    s = _schedule(prediction_type)
    _, x_ref, noise, _, _ = _batch(4)
    x_t = s.add_noise(x_ref, noise, T)
    np.testing.assert_allclose(masked.static_noise(s, x_t, x_ref, T), noise, **TOL)


def test_mask_shape_is_checked():
    s = _schedule("epsilon")
    x0, x_ref, _, pred, _ = _batch(5)
    with pytest.raises(ValueError, match=r"mask must have shape \(6, 6, 5, 1\)"):
        masked.blend_prediction(s, pred, np.ones((6, 6, 5, 2)), x0, T, x_ref)


# ----------------------------------------------------------------- the loss

def _numpy_loss(alphas_cumprod, prediction_type, pred, mask, x_t, t, x_ref, target, weight, pixel_weight=1.0):
    """Float64 reference through x0 space (a different route from the implementation)."""
    a = alphas_cumprod[t].astype(np.float64)[:, None, None, None]
    pred, mask, x_t, x_ref, target = (np.asarray(v, np.float64) for v in (pred, mask, x_t, x_ref, target))
    if prediction_type == "epsilon":
        x0_theta = (x_t - np.sqrt(1 - a) * pred) / np.sqrt(a)
    elif prediction_type == "sample":
        x0_theta = pred
    else:
        x0_theta = np.sqrt(a) * x_t - np.sqrt(1 - a) * pred
    x0_hat = mask * x0_theta + (1 - mask) * x_ref
    eps_hat = (x_t - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)
    out = {"epsilon": eps_hat, "sample": x0_hat,
           "v_prediction": np.sqrt(a) * eps_hat - np.sqrt(1 - a) * x0_hat}[prediction_type]
    per = (pixel_weight * (out - target) ** 2).mean(axis=(1, 2, 3))
    raw = (pixel_weight * (pred - target) ** 2).mean(axis=(1, 2, 3))
    return (weight * per).mean(), (weight * raw).mean()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss(prediction_type):
    s = _schedule(prediction_type)
    x0, x_ref, noise, pred, mask = _batch(6)
    x_t = s.add_noise(x0, noise, T)
    target = s.training_target(x0, noise, T)
    one = np.ones_like(mask)
    loss, metrics = masked.masked_loss(s, target, one, x_t, T, x_ref, target)
    assert float(loss) == 0.0 and float(metrics["loss_raw"]) == 0.0 and float(metrics["mask_mean"]) == 1.0

    weight = np.linspace(0.5, 2.0, len(T)).astype(np.float32)
    pixel_weight = np.random.default_rng(9).uniform(0.0, 5.0, mask.shape).astype(np.float32)
    loss_fn = jax.jit(lambda *a: masked.masked_loss(s, *a[:-1], pixel_weight=a[-1]))
    for w, pw in ((None, None), (weight, None), (weight, pixel_weight)):
        loss, metrics = loss_fn(pred, mask, x_t, T, x_ref, target, w, pw)
        exp_loss, exp_raw = _numpy_loss(np.asarray(s.alphas_cumprod), prediction_type, pred, mask, x_t, T, x_ref,
                                        target, np.ones(len(T)) if w is None else w, 1.0 if pw is None else pw)
        np.testing.assert_allclose(loss, exp_loss, rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], loss)
        np.testing.assert_allclose(metrics["loss_raw"], exp_raw, rtol=1e-5)
        np.testing.assert_allclose(metrics["mask_mean"], mask.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        masked.masked_loss(s, pred, mask, x_t, T, x_ref, target, np.ones(3))


def test_pixel_weights_of_one_are_the_plain_loss():
    s = _schedule("v_prediction")
    x0, x_ref, noise, pred, mask = _batch(8)
    x_t = s.add_noise(x0, noise, T)
    target = s.training_target(x0, noise, T)
    plain = masked.masked_loss(s, pred, mask, x_t, T, x_ref, target)[0]
    ones = masked.masked_loss(s, pred, mask, x_t, T, x_ref, target, pixel_weight=np.ones_like(mask))[0]
    np.testing.assert_allclose(ones, plain, rtol=1e-6)
    with pytest.raises(ValueError, match="pixel_weight must have shape"):
        masked.masked_loss(s, pred, mask, x_t, T, x_ref, target, pixel_weight=np.ones(mask.shape[:-1]))


def test_loss_gradients_are_finite():
    s = _schedule("epsilon")
    x0, x_ref, noise, pred, mask = _batch(7)
    x_t = s.add_noise(x0, noise, T)
    target = s.training_target(x0, noise, T)
    logits = np.log(mask / (1 - mask))
    grads = jax.grad(lambda p, l: masked.masked_loss(s, p, masked.mask_from_logits(l), x_t, T, x_ref, target)[0],
                     argnums=(0, 1))(pred, logits)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert float(jnp.abs(grads[1]).max()) > 0  # the mask is learned through the loss


# -------------------------------------------------------------- noise augmentation

def test_augmentation_level_zero_is_identity_and_matches_forward_process():
    s = _schedule("epsilon")
    _, refs, noise, _, _ = _batch(8, c=8)  # R = 2 frames stacked on channels
    np.testing.assert_array_equal(masked.augment_at_level(s, refs, noise, jnp.zeros(len(T))), refs)
    np.testing.assert_array_equal(masked.augment_at_level(s, refs, noise, 0.0), refs)
    np.testing.assert_allclose(masked.augment_at_level(s, refs, noise, (T + 1) / 1000.0),
                               s.add_noise(refs, noise, T), rtol=1e-6, atol=1e-6)
    out, level = masked.augment_references(s, jax.random.key(0), refs, 0.0)
    np.testing.assert_array_equal(out, refs)
    np.testing.assert_array_equal(level, 0.0)


def test_augmentation_levels_uniform_in_range():
    s = _schedule("epsilon")
    refs = jnp.zeros((4096, 2, 2, 4))
    s_max = 0.3
    out, level = jax.jit(lambda k, r: masked.augment_references(s, k, r, s_max))(jax.random.key(1), refs)
    level = np.asarray(level)
    assert level.shape == (4096,) and level.min() >= 0.0 and level.max() <= s_max
    # U[0, s_max]: mean s_max/2 (std of the mean s_max/sqrt(12 n)), and every decile about 10% full
    assert abs(level.mean() - s_max / 2) < 5 * s_max / np.sqrt(12 * 4096)
    hist, _ = np.histogram(level, bins=10, range=(0, s_max))
    assert np.all(np.abs(hist / 4096 - 0.1) < 5 * np.sqrt(0.09 / 4096))
    # zero refs: the output is pure noise scaled by √(1 − ᾱ(s)), per example
    scale = np.sqrt(1 - np.asarray(s.alpha_bar_at_level(level)))
    z = np.asarray(out).reshape(4096, -1)[scale > 1e-3] / scale[scale > 1e-3, None]
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.015  # 65k standard normals: 5 sigma of mean/std
    with pytest.raises(ValueError, match=r"s_max .* must be in \[0, 1\], got 1.5"):
        masked.augment_references(s, jax.random.key(0), refs, 1.5)


def test_history_noise_draws_a_share_of_levels_over_the_whole_range():
    """p_full = 0 draws exactly what no p_full draws; p_full = 0.25 puts about a quarter of the levels in
    U[0, 1] (those above s_max are only from there: 0.25 x 0.7 of all), the rest stay in U[0, s_max]."""
    s = _schedule("epsilon")
    refs = jnp.zeros((4096, 2, 2, 4))
    key = jax.random.key(2)
    plain = masked.augment_references(s, key, refs, 0.3)
    np.testing.assert_array_equal(masked.augment_references(s, key, refs, 0.3, 0.0)[1], plain[1])
    _, level = masked.augment_references(s, key, refs, 0.3, 0.25)
    level = np.asarray(level)
    above = (level > 0.3).mean()
    assert abs(above - 0.25 * 0.7) < 5 * np.sqrt(0.175 * 0.825 / 4096) and level.max() <= 1.0
    kept = level == np.asarray(plain[1])
    assert abs(kept.mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 4096)


# ------------------------------------------------------------ conditioning dropout

def test_drop_conditioning_statistics():
    n, p_text, p_ref = 200_000, 0.1, 0.3
    drop_text, drop_ref = jax.jit(masked.drop_conditioning, static_argnums=3)(jax.random.key(2), p_text, p_ref, n)
    drop_text, drop_ref = np.asarray(drop_text), np.asarray(drop_ref)
    assert drop_text.dtype == bool and drop_text.shape == drop_ref.shape == (n,)
    sigma = lambda p: np.sqrt(p * (1 - p) / n)  # binomial standard error: 5 sigma is about 0.3% here
    assert abs(drop_text.mean() - p_text) < 5 * sigma(p_text)
    assert abs(drop_ref.mean() - p_ref) < 5 * sigma(p_ref)
    assert abs((drop_text & drop_ref).mean() - p_text * p_ref) < 5 * sigma(p_text * p_ref)  # independent
    # over many small batches with fresh keys, as in training
    keys = jax.random.split(jax.random.key(3), 2000)
    text, ref = jax.vmap(lambda k: masked.drop_conditioning(k, p_text, p_ref, 32))(keys)
    assert abs(float(text.mean()) - p_text) < 5 * np.sqrt(p_text * (1 - p_text) / 64_000)
    assert abs(float(ref.mean()) - p_ref) < 5 * np.sqrt(p_ref * (1 - p_ref) / 64_000)


def test_drop_conditioning_deterministic_and_extremes():
    a = masked.drop_conditioning(jax.random.key(4), 0.5, 0.5, 64)
    b = masked.drop_conditioning(jax.random.key(4), 0.5, 0.5, 64)
    c = masked.drop_conditioning(jax.random.key(5), 0.5, 0.5, 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], a[1])
    none_text, all_ref = masked.drop_conditioning(jax.random.key(6), 0.0, 1.0, 1000)
    assert not bool(none_text.any()) and bool(all_ref.all())
    with pytest.raises(ValueError, match=r"p_ref must be a probability in \[0, 1\], got -0.1"):
        masked.drop_conditioning(jax.random.key(0), 0.1, -0.1, 4)


def test_apply_drops():
    mask = jnp.full((3, 2, 2, 1), 0.25)
    out = masked.apply_ref_drop(mask, jnp.array([True, False, True]))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [1.0, 0.25, 1.0])
    text = jnp.arange(3 * 2 * 4, dtype=jnp.float32).reshape(3, 2, 4)
    empty = -jnp.ones((2, 4))
    out = masked.apply_text_drop(text, empty, jnp.array([False, True, False]))
    np.testing.assert_array_equal(out[1], empty)
    np.testing.assert_array_equal(out[::2], text[::2])
    np.testing.assert_allclose(masked.mask_from_logits(jnp.array([0.0, 10.0])), [0.5, 1 / (1 + np.exp(-10))])
