"""The train step's loss: the unmasked term adds exactly the plain diffusion loss; ablation switches act."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
             "tokens": jnp.asarray(np.stack([comps.tokenize("a red square moving right on a black background")] * 4))}
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
