"""Own-rollout references: the model's own frames, as the sampler makes them, and teacher forcing before the start."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax import components as components_lib
from artv_jax import train_step as ts
from artv_jax.diffusion import masked, rollout
from test_sampling import SHAPE, make, texts
from train_worker import tiny_config


@pytest.mark.parametrize("r", [1, 2])
def test_own_references_are_the_samplers_frames(r):
    """K = 2 generations from the true window, each a direct `denoise_frame` call; a clip's first frame is kept."""
    sampler, params = make(r=r)
    cond, uncond = texts(1)
    k = 2
    b, h, w, c = SHAPE
    window = jax.random.normal(jax.random.PRNGKey(1), (b, h, w, (r + k) * c))
    anchor = jax.random.normal(jax.random.PRNGKey(2), SHAPE)
    # Example 0: target frame 9, nothing before the clip's start. Example 1: target frame 2 at stride 1, so the
    # window's frames are [0] * r + [0, 1]: the window position holding frame 0 stays the true frame.
    index, stride = jnp.array([9, 2]), jnp.array([1, 1])
    key = jax.random.PRNGKey(3)
    got = rollout.own_references(sampler, params, key, window, anchor, cond[0], uncond, index, stride, r)

    slots = [window[..., p * c:(p + 1) * c] for p in range(r + k)]
    for g in range(k):
        p = r + g
        frame = sampler.denoise_frame(params, jax.random.fold_in(key, g), cond[0], uncond,
                                      jnp.concatenate(slots[p - r:p], -1), anchor, None, python_loop=True)
        keep_true = np.array([False, p < r + 1])  # example 1: position r holds frame 0
        slots[p] = jnp.where(keep_true[:, None, None, None], slots[p], frame)
    want = jnp.concatenate(slots[-r:], -1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)  # fori_loop against a Python loop
    assert got.shape == (b, h, w, r * c)
    assert np.abs(np.asarray(got[0] - window[0, ..., -r * c:])).max() > 1e-2  # not a copy of the true frames


def _setup(**objective):
    config = tiny_config(num_steps=1, checkpoint_every=1)
    config.objective.update(objective)
    config.sample.num_steps = 2
    comps, _ = components_lib.build(config)
    params = comps.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    s, frames = comps.frame_size, comps.model.config.num_ref_frames + config.objective.rollout_frames
    batch = {"target": rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8),
             "refs": rng.integers(0, 256, (4, frames, s, s, 3), dtype=np.uint8),
             "anchor": rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8),
             "tokens": jnp.asarray(np.stack([comps.tokenize("a red square moving right on a black background")] * 4)),
             "frame_index": np.array([5, 2, 3, 1], np.int32), "stride": np.ones(4, np.int32)}
    return config, comps, params, batch


def test_loss_trains_on_the_models_own_references(monkeypatch):
    """The references the loss noise-augments are, for the first `rollout_count` tuples, the sampler's frames
    from the batch's earlier true frames; the rest, and every tuple before `rollout_start`, the true ones."""
    config, comps, params, batch = _setup(rollout_frames=1, rollout_fraction=0.5, rollout_steps=2, rollout_start=3)
    assert ts.rollout_count(config, 4) == 2
    seen = []
    real = masked.augment_references
    monkeypatch.setattr(masked, "augment_references", lambda s, k, refs, *a: seen.append(refs) or real(s, k, refs, *a))
    key = jax.random.PRNGKey(3)

    # Before rollout_start: teacher forcing, the same loss as a run without own rollouts on the last frame.
    before, _ = ts.loss_fn(comps, config, params, batch, key, step=jnp.int32(2))
    tf_config = config.copy_and_resolve_references()
    tf_config.objective.rollout_frames = 0
    teacher, _ = ts.loss_fn(comps, tf_config, params, {**batch, "refs": batch["refs"][:, 1:]}, key)  # the last R
    assert float(before) == float(teacher)

    after, _ = ts.loss_fn(comps, config, params, batch, key, step=jnp.int32(3))
    refs = seen[-1]
    latent = lambda frames: ts.latents_of(comps, params, frames)
    r, c = comps.model.config.num_ref_frames, comps.model.latent_channels  # the default's R = 2, K = 1
    window = jnp.concatenate([latent(batch["refs"][:, i]) for i in range(r + 1)], -1)
    caption = comps.encode_text(params, batch["tokens"])
    empty = jnp.broadcast_to(comps.encode_text(params, jnp.asarray(comps.tokenize(""))[None])[0], caption.shape)
    own = rollout.own_references(ts.rollout_sampler(comps, config), params["artv"], jax.random.fold_in(key, 4),
                                 window[:2], latent(batch["anchor"])[:2], caption[:2], empty[:2],
                                 jnp.asarray(batch["frame_index"][:2]), jnp.asarray(batch["stride"][:2]), r)
    np.testing.assert_allclose(refs[:2], own, atol=1e-5)
    np.testing.assert_array_equal(refs[2:], window[2:, ..., c:])
    assert np.abs(np.asarray(refs[:2] - window[:2, ..., c:])).max() > 1e-2
    assert np.isfinite(float(after)) and float(after) != float(before)


def test_refs_must_hold_the_rollout_frames():
    config, comps, params, batch = _setup(rollout_frames=1)
    with pytest.raises(ValueError, match="rollout_frames"):
        ts.loss_fn(comps, config, params, {**batch, "refs": batch["refs"][:, 1:]}, jax.random.PRNGKey(0))


def test_train_step_with_own_rollouts_updates():
    """The jitted step, with its lax.cond on the step: finite loss, parameters move."""
    config, comps, params, batch = _setup(rollout_frames=1, rollout_steps=2, rollout_start=0)
    trainable, frozen = ts.split_params(params, tuple(config.train.trainable))
    tx = ts.make_optimizer(config)
    state = ts.TrainState.create(trainable, tx)
    step = jax.jit(ts.make_train_step(comps, config, tx))
    new, metrics = step(state, frozen, batch, jax.random.PRNGKey(0))  # step 0: learning rate 0 (warm-up)
    new, metrics = step(new, frozen, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(metrics["loss"])) and int(new.nonfinite) == 0
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), new.params, state.params))
    assert max(float(m) for m in moved) > 0
