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
             "refs": rng.integers(0, 256, (4, 1, s, s, 3), dtype=np.uint8),
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
