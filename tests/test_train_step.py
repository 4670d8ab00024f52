"""The train step's loss: the unmasked term adds exactly the plain diffusion loss; ablation switches act."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax import components as components_lib
from artv_jax import train_step as ts
from train_worker import tiny_config


def _setup(**objective):
    config = tiny_config(num_steps=1, checkpoint_every=1)
    config.objective.update(objective)
    comps, _ = components_lib.build(config)
    params = comps.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    s = comps.frame_size
    batch = {"target": rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8),
             "refs": rng.integers(0, 256, (4, comps.model.config.num_ref_frames, s, s, 3), dtype=np.uint8),
             "anchor": rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8),
             "tokens": jnp.asarray(np.stack([comps.tokenize("a red square moving right on a black background")] * 4)),
             "frame_index": np.array([1, 2, 3, 1], np.int32), "stride": np.ones(4, np.int32)}
    return config, comps, params, batch


def test_unmasked_weight_adds_the_plain_diffusion_loss():
    key = jax.random.PRNGKey(3)
    config, comps, params, batch = _setup(unmasked_weight=0.0)
    loss0, m0 = ts.loss_fn(comps, config, params, batch, key)
    config.objective.unmasked_weight = 0.5
    loss1, m1 = ts.loss_fn(comps, config, params, batch, key)
    np.testing.assert_allclose(float(m1["loss_masked"]), float(loss0), rtol=1e-6)
    np.testing.assert_allclose(float(loss1), float(loss0) + 0.5 * float(m0["loss_raw"]), rtol=1e-6)
    assert float(m1["loss"]) == float(loss1)


def test_change_weight_scales_the_loss_where_frames_changed():
    """Random frames change in every latent cell: the loss is (1 + w) times the plain one; identical frames: 1 times."""
    key = jax.random.PRNGKey(4)
    config, comps, params, batch = _setup(unmasked_weight=1.0, p_ref=0.0, change_weight=0.0, foreground_weight=0.0)
    plain, _ = ts.loss_fn(comps, config, params, batch, key)
    config.objective.change_weight = 3.0
    weighted, _ = ts.loss_fn(comps, config, params, batch, key)
    np.testing.assert_allclose(float(weighted), 4.0 * float(plain), rtol=1e-5)

    still = {**batch, "target": batch["refs"][:, -1]}
    config.objective.change_weight = 0.0
    plain, _ = ts.loss_fn(comps, config, params, still, key)
    config.objective.change_weight = 3.0
    np.testing.assert_allclose(float(ts.loss_fn(comps, config, params, still, key)[0]), float(plain), rtol=1e-6)

    config.objective.p_ref = 1.0  # text-only frames have no previous frame to change from: weight 1
    dropped, _ = ts.loss_fn(comps, config, params, batch, key)
    config.objective.change_weight = 0.0
    np.testing.assert_allclose(float(dropped), float(ts.loss_fn(comps, config, params, batch, key)[0]), rtol=1e-6)


def test_foreground_weight_adds_to_the_change_weight_on_every_frame():
    """Random frames are foreground in every cell: weight 1 + w_fg, text-only or not, and 1 + w_c + w_fg with a change
    weight; a flat frame has no foreground: weight 1."""
    key = jax.random.PRNGKey(5)
    config, comps, params, batch = _setup(unmasked_weight=1.0)

    def loss(p_ref, change_weight, foreground_weight, frames=batch):
        config.objective.update(p_ref=p_ref, change_weight=change_weight, foreground_weight=foreground_weight)
        return float(ts.loss_fn(comps, config, params, frames, key)[0])

    for p_ref in (0.0, 1.0):
        plain = loss(p_ref, 0.0, 0.0)
        np.testing.assert_allclose(loss(p_ref, 0.0, 2.0), 3.0 * plain, rtol=1e-5)
        both = 6.0 if p_ref == 0.0 else 3.0  # text-only frames have no change weight
        np.testing.assert_allclose(loss(p_ref, 3.0, 2.0), both * plain, rtol=1e-5)

    flat = {**batch, "target": np.full_like(batch["target"], 77)}
    np.testing.assert_allclose(loss(1.0, 0.0, 2.0, flat), loss(1.0, 0.0, 0.0, flat), rtol=1e-6)


def test_start_t_logit_normal_without_frame_index_names_the_missing_keys():
    config, comps, params, batch = _setup(start_t_logit_normal=(2.0, 1.0))
    assert np.isfinite(float(ts.loss_fn(comps, config, params, batch, jax.random.PRNGKey(0))[0]))
    bare = {k: v for k, v in batch.items() if k not in ("frame_index", "stride")}
    with pytest.raises(ValueError, match=r"\['frame_index', 'stride'\]"):
        ts.loss_fn(comps, config, params, bare, jax.random.PRNGKey(0))


def test_loss_space_v_counts_an_x0_prediction_error_as_in_v():
    """x0-prediction trained on the v loss: the per-example loss is the MSE of x0 weighted by
    `schedule.v_loss_weight`, i.e. the MSE of the v that the predicted x0 implies; loss_space 'output' is plain."""
    key = jax.random.PRNGKey(5)
    config, comps, params, batch = _setup(unmasked_weight=0.0, change_weight=0.0, foreground_weight=0.0,
                                          t_logit_normal=(-0.85, 1.2))
    config.schedule.prediction_type = "sample"
    config.objective.loss_space = "output"
    comps, _ = components_lib.build(config)
    captured = {}
    real = ts.masked.masked_loss

    def spy(schedule, pred, mask, x_t, t, x_ref, target, weight=None, pixel_weight=None):
        captured.update(pred=pred, mask=mask, x_t=x_t, t=t, x_ref=x_ref, target=target, weight=weight)
        return real(schedule, pred, mask, x_t, t, x_ref, target, weight, pixel_weight)

    ts.masked.masked_loss = spy
    try:
        plain, _ = ts.loss_fn(comps, config, params, batch, key)
        assert captured["weight"] is None
        config.objective.loss_space = "v"
        in_v, _ = ts.loss_fn(comps, config, params, batch, key)
    finally:
        ts.masked.masked_loss = real
    s, c = comps.schedule, captured
    x0_hat = ts.masked.blend_x0(s, c["pred"], c["mask"], c["x_t"], c["t"], c["x_ref"])
    v_hat, v = s.v_from_x0(c["x_t"], x0_hat, c["t"]), s.v_from_x0(c["x_t"], c["target"], c["t"])
    assert float(jnp.max(s.v_loss_weight(c["t"]))) < 400.0  # no cap in play: the identity is exact
    np.testing.assert_allclose(float(in_v), float(jnp.mean((v_hat - v) ** 2)), rtol=1e-4)
    assert float(in_v) > float(plain)  # every weight 1 / (1 − ᾱ_t) is > 1


def test_make_optimizer_takes_rate_warmup_and_length_from_its_stage():
    config = tiny_config(num_steps=10, checkpoint_every=10)
    config.image_base.update(num_steps=40, learning_rate=0.5, warmup_steps=4)
    params = {"w": jnp.zeros(())}
    for stage, peak_at, peak in (("train", config.train.warmup_steps, config.train.learning_rate),
                                 ("image_base", 4, 0.5)):
        tx = ts.make_optimizer(config, stage)
        state = tx.init(params)
        for _ in range(peak_at):  # AdamW's first update is lr · sign(g) with g = 1
            _, state = tx.update({"w": jnp.ones(())}, state, params)
        updates, _ = tx.update({"w": jnp.ones(())}, state, params)
        np.testing.assert_allclose(-float(updates["w"]), peak, rtol=1e-3)
