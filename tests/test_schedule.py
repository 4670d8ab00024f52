"""`artv_jax.diffusion.schedule` against diffusers' DDPMScheduler/DDIMScheduler numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.diffusion.schedule import V_LOSS_WEIGHT_CAP, NoiseSchedule

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

SD1 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
         "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
         "timestep_spacing": "leading"}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _rng_latents(seed, shape=(4, 8, 8, 4)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_tables_match_ddpm_scheduler(beta_schedule):
    cfg = {"beta_schedule": beta_schedule, "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    ours, ref = NoiseSchedule.from_config(cfg), diffusers.DDPMScheduler(**cfg)
    assert ours.betas.dtype == jnp.float32 and ours.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=0)


def test_trained_betas():
    betas = np.linspace(1e-4, 2e-2, 50)
    ours = NoiseSchedule.from_config({"num_train_timesteps": 50, "trained_betas": betas.tolist()})
    ref = diffusers.DDPMScheduler(num_train_timesteps=50, trained_betas=betas.tolist())
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="trained_betas must have num_train_timesteps=1000"):
        NoiseSchedule(trained_betas=tuple(betas))


def test_from_config_defaults_follow_ddim_scheduler():
    cfg = {"beta_schedule": "scaled_linear", "_class_name": "PNDMScheduler", "skip_prk_steps": True}
    ours, ref = NoiseSchedule.from_config(cfg), diffusers.DDIMScheduler.from_config(cfg).config
    for key in ("num_train_timesteps", "beta_start", "beta_end", "prediction_type", "steps_offset",
                "set_alpha_to_one", "timestep_spacing", "clip_sample", "clip_sample_range"):
        assert getattr(ours, key) == ref[key], key


def test_from_config_real_sd_configs():
    sd15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
            "clip_sample": False}
    sd21 = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
    s1, s2 = NoiseSchedule.from_config(sd15), NoiseSchedule.from_config(sd21)
    assert s1.prediction_type == "epsilon" and s2.prediction_type == "v_prediction"
    assert s1.final_alpha_cumprod == pytest.approx(1 - 0.00085, rel=1e-6)
    np.testing.assert_array_equal(s1.ddim_timesteps(50)[[0, 1, -1]], [981, 961, 1])


@pytest.mark.parametrize("key,value,match", [
    ("beta_schedule", "squaredcos_cap_v2", "beta_schedule='squaredcos_cap_v2'"),
    ("prediction_type", "flow", "prediction_type='flow'"),
    ("timestep_spacing", "karras", "timestep_spacing='karras'"),
    ("thresholding", True, "thresholding=True"),
    ("rescale_betas_zero_snr", True, "rescale_betas_zero_snr=True"),
    ("made_up_key", 1, r"unknown scheduler config keys \['made_up_key'\]"),
])
def test_from_config_rejects(key, value, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_config({**SD1, key: value})


def test_hashable_static_argument():
    a, b = NoiseSchedule.from_config(SD1), NoiseSchedule.from_config(dict(SD1))
    assert a == b and hash(a) == hash(b) and a != NoiseSchedule.from_config({**SD1, "beta_end": 0.02})
    f = jax.jit(lambda s, x, t: s.add_noise(x, x, t), static_argnums=0)
    x = jnp.ones((2, 2, 2, 1))
    np.testing.assert_allclose(f(a, x, jnp.array([3, 4])), a.add_noise(x, x, jnp.array([3, 4])), rtol=1e-6)


# ------------------------------------------------------------- forward process

@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_add_noise_and_velocity_match_ddpm(beta_schedule):
    cfg = {**SD1, "beta_schedule": beta_schedule}
    ours = NoiseSchedule.from_config(cfg)
    ref = diffusers.DDPMScheduler(**{k: v for k, v in cfg.items() if k != "set_alpha_to_one"})
    x0, noise = _rng_latents(0), _rng_latents(1)
    t = np.array([0, 17, 500, 999])
    np.testing.assert_allclose(
        ours.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t)),
        ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy(), **TOL)
    np.testing.assert_allclose(
        ours.get_velocity(x0, noise, t),
        ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy(), **TOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversions_roundtrip(prediction_type):
    s = NoiseSchedule.from_config({**SD1, "prediction_type": prediction_type})
    x0, eps = _rng_latents(2), _rng_latents(3)
    t = jnp.array([0, 250, 750, 999])
    x_t = s.add_noise(x0, eps, t)
    v = s.get_velocity(x0, eps, t)
    np.testing.assert_allclose(s.x0_from_eps(x_t, eps, t), x0, **TOL)
    np.testing.assert_allclose(s.eps_from_x0(x_t, x0, t), eps, **TOL)
    np.testing.assert_allclose(s.x0_from_v(x_t, v, t), x0, **TOL)
    np.testing.assert_allclose(s.eps_from_v(x_t, v, t), eps, **TOL)
    np.testing.assert_allclose(s.v_from_x0(x_t, x0, t), v, **TOL)
    np.testing.assert_array_equal(s.v_from_x0_eps(x0, eps, t), v)
    out = {"epsilon": eps, "v_prediction": v, "sample": x0}[prediction_type]
    np.testing.assert_array_equal(s.training_target(x0, eps, t), out)
    x0_hat, eps_hat = s.to_x0_eps(out, x_t, t)
    np.testing.assert_allclose(x0_hat, x0, **TOL)
    np.testing.assert_allclose(eps_hat, eps, **TOL)
    np.testing.assert_allclose(s.output_from_x0(x_t, x0, t), out, **TOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_v_loss_weight_counts_an_output_error_as_in_v(prediction_type):
    """w_t · (output error)² = (v error)² for any error of the output, where w_t is below the cap."""
    s = NoiseSchedule.from_config({**SD1, "prediction_type": prediction_type})
    x0, eps, err = _rng_latents(2), _rng_latents(3), 0.1 * _rng_latents(4)
    t = jnp.array([40, 250, 750, 990])
    x_t = s.add_noise(x0, eps, t)
    out = s.training_target(x0, eps, t)
    v_of = lambda o: s.v_from_x0(x_t, s.to_x0_eps(o, x_t, t)[0], t)
    v_err = np.sum((np.asarray(v_of(out + err)) - np.asarray(v_of(out))) ** 2, axis=(1, 2, 3))
    w = np.asarray(s.v_loss_weight(t))
    assert np.all(w < V_LOSS_WEIGHT_CAP)
    np.testing.assert_allclose(w * np.sum(np.asarray(err) ** 2, axis=(1, 2, 3)), v_err, rtol=2e-3)
    # capped where the conversion blows up: x0 at t = 0 (1 / (1 − ᾱ_0) = 1176 here); v is never weighted
    a0 = float(s.alphas_cumprod[0])
    expected = {"sample": V_LOSS_WEIGHT_CAP, "epsilon": 1.0 / a0, "v_prediction": 1.0}[prediction_type]
    assert float(s.v_loss_weight(jnp.array([0]))[0]) == pytest.approx(expected, rel=1e-6)


def test_alpha_bar_levels_and_ranges():
    s = NoiseSchedule.from_config(SD1)
    table = np.asarray(s.alphas_cumprod)
    t = np.array([0, 1, 499, 999])
    np.testing.assert_array_equal(s.alpha_bar(t), table[t])
    np.testing.assert_allclose(s.alpha_bar(t.astype(np.float32)), table[t], rtol=1e-6)
    np.testing.assert_allclose(s.alpha_bar_at_level((t + 1) / 1000), table[t], rtol=1e-6)
    assert float(s.alpha_bar_at_level(0.0)) == 1.0 and float(s.alpha_bar(-1.0)) == 1.0
    mid = float(s.alpha_bar(10.5))
    assert table[11] < mid < table[10]
    levels = np.asarray(s.alpha_bar_at_level(jnp.linspace(0, 1, 2001)))
    assert np.all(np.diff(levels) < 0)
    with pytest.raises(ValueError, match=r"timestep out of range \[0, 999\]"):
        s.alpha_bar(np.array([3, 1000]))
    with pytest.raises(ValueError, match="4 timesteps for a batch of 2"):
        s.add_noise(jnp.ones((2, 3, 3, 1)), jnp.ones((2, 3, 3, 1)), jnp.arange(4))


# --------------------------------------------------------------------- DDIM

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_ddim_timesteps_match_diffusers(spacing, steps_offset):
    cfg = {**SD1, "timestep_spacing": spacing, "steps_offset": steps_offset}
    ours, ref = NoiseSchedule.from_config(cfg), diffusers.DDIMScheduler.from_config(cfg)
    for n in (1, 3, 7, 10, 20, 25, 50, 100, 333, 999):
        ref.set_timesteps(n)
        ts = ours.ddim_timesteps(n)
        assert ts.dtype == np.int64
        np.testing.assert_array_equal(ts, ref.timesteps.numpy(), err_msg=f"{spacing}, {n} steps")


def test_ddim_timesteps_edge_cases():
    s = NoiseSchedule.from_config({**SD1, "timestep_spacing": "trailing"})
    ts = s.ddim_timesteps(61)  # diffusers' float arange gives 62 entries here
    assert len(ts) == 61 and ts[0] == 999 and np.all(np.diff(ts) < 0) and ts[-1] >= 0
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, num_train_timesteps=1000\]"):
        s.ddim_timesteps(1001)
    with pytest.raises(ValueError, match="DDIM timesteps reach 1000"):
        NoiseSchedule.from_config(SD1).ddim_timesteps(1000)  # leading + steps_offset 1


DDIM_CASES = [
    # prediction_type, eta, set_alpha_to_one, spacing, clip_sample
    ("epsilon", 0.0, False, "leading", False),
    ("epsilon", 0.0, True, "leading", False),
    ("epsilon", 0.7, False, "leading", False),
    ("epsilon", 1.0, True, "trailing", False),
    ("v_prediction", 0.0, False, "trailing", False),
    ("v_prediction", 0.0, True, "leading", False),
    ("v_prediction", 0.5, False, "leading", False),
    ("v_prediction", 1.0, True, "linspace", True),
    ("sample", 0.0, False, "leading", False),
    ("sample", 0.6, True, "trailing", True),
]


@pytest.mark.parametrize("prediction_type,eta,set_alpha_to_one,spacing,clip_sample", DDIM_CASES)
def test_ddim_step_matches_diffusers(prediction_type, eta, set_alpha_to_one, spacing, clip_sample):
    cfg = {**SD1, "prediction_type": prediction_type, "set_alpha_to_one": set_alpha_to_one,
           "timestep_spacing": spacing, "clip_sample": clip_sample, "clip_sample_range": 1.5}
    ours, ref = NoiseSchedule.from_config(cfg), diffusers.DDIMScheduler.from_config(cfg)
    n = 10
    ref.set_timesteps(n)
    ts = ours.ddim_timesteps(n)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    rng = np.random.default_rng(4)
    x_ref = x_ours = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    step = jax.jit(lambda out, t, tp, x, z: ours.ddim_step(out, t, tp, x, eta, z))
    for t in ts:  # the whole trajectory, last step (t_prev < 0) included
        out = rng.standard_normal(x_ours.shape).astype(np.float32)
        z = rng.standard_normal(x_ours.shape).astype(np.float32)
        t_prev = t - 1000 // n  # diffusers' rule
        expected = ref.step(torch.from_numpy(out), int(t), torch.from_numpy(x_ref), eta=eta,
                            variance_noise=torch.from_numpy(z) if eta > 0 else None).prev_sample.numpy()
        got = np.asarray(step(out, jnp.int32(t), jnp.int32(t_prev), x_ours, z))
        np.testing.assert_allclose(got, expected, err_msg=f"t={t}", **TOL)
        x_ref, x_ours = expected, got


def test_ddim_last_step_with_alpha_one_returns_x0():
    s = NoiseSchedule.from_config({**SD1, "set_alpha_to_one": True})
    x, out = _rng_latents(5), _rng_latents(6)
    t = jnp.full((4,), 1, jnp.int32)
    np.testing.assert_allclose(s.ddim_step(out, t, -1, x, 0.9, _rng_latents(7)),
                               s.to_x0_eps(out, x, t)[0], **TOL)
    s0 = NoiseSchedule.from_config(SD1)  # set_alpha_to_one=False: ᾱ_prev = ᾱ_0 after the last step
    np.testing.assert_allclose(s0.ddim_step(out, t, -1, x), s0.ddim_step(out, t, 0, x), rtol=0, atol=0)


def test_ddim_step_batched_timesteps_and_loops():
    s = NoiseSchedule.from_config({**SD1, "prediction_type": "v_prediction"})
    x, out, z = _rng_latents(8), _rng_latents(9), _rng_latents(10)
    t, t_prev = jnp.array([981, 501, 21, 1]), jnp.array([961, 481, 1, -19])
    batched = s.ddim_step(out, t, t_prev, x, 0.3, z)
    for b in range(4):
        single = s.ddim_step(out[b:b + 1], t[b], t_prev[b], x[b:b + 1], 0.3, z[b:b + 1])
        np.testing.assert_allclose(batched[b:b + 1], single, rtol=1e-6, atol=1e-6)
    # a fori_loop with traced timesteps equals the Python loop
    ts = jnp.asarray(s.ddim_timesteps(8), jnp.int32)
    prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
    model = lambda x_, t_: jnp.tanh(x_) * (t_ / 1000.0)  # a stand-in network
    body = lambda i, x_: s.ddim_step(model(x_, ts[i]), ts[i], prev[i], x_, 0.0)
    looped = jax.jit(lambda x_: jax.lax.fori_loop(0, 8, body, x_))(x)
    reference = x
    for i in range(8):
        reference = body(i, reference)
    np.testing.assert_allclose(looped, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs `noise`"):
        s.ddim_step(out, t, t_prev, x, 0.5)
