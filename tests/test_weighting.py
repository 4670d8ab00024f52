"""`artv_jax.diffusion.weighting`: timestep densities and per-position loss weights of the training tuples."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from artv_jax.diffusion import weighting


def test_change_weight_map():
    """A square moving 1 px right changes two columns of pixels; the map marks their latent cells, only those."""
    from artv_jax.data import shapes

    s, b = 32, shapes.box_size(32)
    ref = np.zeros((2, s, s, 3), np.uint8)
    ref[:, 5:5 + b, 7:7 + b] = (230, 25, 25)
    target = np.zeros_like(ref)
    target[0, 5:5 + b, 8:8 + b] = (230, 25, 25)  # moved right by one pixel
    target[1] = ref[1]  # not moved
    target[1, 0, 0] = (5, 5, 5)  # below the threshold: not a change
    weights = np.asarray(weighting.change_weight_map(target, ref, factor=2, change_weight=4.0))
    assert weights.shape == (2, 16, 16, 1)
    changed = np.zeros((s, s), bool)
    changed[5:5 + b, 7] = changed[5:5 + b, 7 + b] = True
    cells = changed.reshape(16, 2, 16, 2).any(axis=(1, 3))
    np.testing.assert_array_equal(weights[0, ..., 0], np.where(cells, 5.0, 1.0))
    np.testing.assert_array_equal(weights[1], np.ones((16, 16, 1)))
    np.testing.assert_array_equal(weighting.change_weight_map(target, ref, 2, 0.0), np.ones((2, 16, 16, 1)))
    with pytest.raises(ValueError, match="do not divide"):
        weighting.change_weight_map(target, ref, 3, 1.0)
    with pytest.raises(ValueError, match="both be"):
        weighting.change_weight_map(target[:1], ref, 2, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        weighting.change_weight_map(target, ref, 2, -1.0)


def test_foreground_weight_map():
    """The object's latent cells (and only those) get 1 + w, on any background; the background is the median colour."""
    from artv_jax.data import shapes

    s, b = 32, shapes.box_size(32)
    frames = np.zeros((2, s, s, 3), np.uint8)
    frames[1] = (128, 128, 128)
    frames[0, 5:5 + b, 7:7 + b] = (230, 25, 25)
    frames[1, 20:20 + b, 1:1 + b] = (0, 0, 0)  # darker than the background: foreground too
    frames[1, 0, 31] = (133, 123, 128)  # within the threshold of the background
    weights = np.asarray(weighting.foreground_weight_map(frames, factor=2, foreground_weight=4.0))
    assert weights.shape == (2, 16, 16, 1)
    for i, (y, x) in enumerate([(5, 7), (20, 1)]):
        obj = np.zeros((s, s), bool)
        obj[y:y + b, x:x + b] = True
        cells = obj.reshape(16, 2, 16, 2).any(axis=(1, 3))
        np.testing.assert_array_equal(weights[i, ..., 0], np.where(cells, 5.0, 1.0))
    np.testing.assert_array_equal(weighting.foreground_weight_map(frames, 2, 0.0), np.ones((2, 16, 16, 1)))
    with pytest.raises(ValueError, match="do not divide"):
        weighting.foreground_weight_map(frames, 3, 1.0)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        weighting.foreground_weight_map(frames[0], 2, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        weighting.foreground_weight_map(frames, 2, -1.0)


def test_training_timesteps_uniform_and_logit_normal():
    key = jax.random.PRNGKey(3)
    # Uniform: exactly the draw the train step made before the option existed.
    uniform = jax.random.randint(key, (64,), 0, 1000)
    np.testing.assert_array_equal(weighting.training_timesteps(key, 64, 1000), uniform)
    np.testing.assert_array_equal(weighting.training_timesteps(key, 64, 1000, ()), uniform)
    # Logit-normal: t = floor(T * sigmoid(loc + scale * n)); its quantiles follow from the normal's.
    loc, scale, n = -0.85, 1.2, 200_000
    t = np.asarray(weighting.training_timesteps(key, n, 1000, (loc, scale)))
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= 999
    logit = lambda q: np.log(q / (1 - q))
    z = np.sort(np.asarray(jax.random.normal(key, (n,))))
    for lo, hi in ((0, 100), (200, 450), (700, 1000)):
        # fraction in [lo, hi) equals that of n in [(logit(lo/T) - loc)/scale, (logit(hi/T) - loc)/scale)
        a = -np.inf if lo == 0 else (logit(lo / 1000) - loc) / scale
        b = np.inf if hi == 1000 else (logit(hi / 1000) - loc) / scale
        expected = np.searchsorted(z, b) - np.searchsorted(z, a)
        assert abs(((t >= lo) & (t < hi)).sum() - expected) <= n * 1e-4, (lo, hi)
    assert abs(np.median(t) - 1000 / (1 + np.exp(-loc))) <= 2
    # The middle noise levels get more of the steps than under uniform sampling.
    assert ((t >= 200) & (t < 450)).mean() > 0.35
    with pytest.raises(ValueError, match="scale must be positive"):
        weighting.training_timesteps(key, 4, 1000, (0.0, 0.0))
    with pytest.raises(ValueError, match=r"\(\) or \(loc, scale\)"):
        weighting.training_timesteps(key, 4, 1000, (0.0,))


def test_start_t_logit_normal_gives_the_first_steps_their_own_timesteps():
    """First steps (frame_index == stride) with their references take the start density's timesteps, the others
    the main one's; without the option the draw is exactly the main density's (no extra randomness consumed)."""
    key = jax.random.PRNGKey(6)
    batch = {"target": np.zeros((5, 4, 4, 3), np.uint8),
             "frame_index": np.array([1, 5, 2, 2, 3], np.int32), "stride": np.array([1, 1, 2, 1, 3], np.int32)}
    objective = {"t_logit_normal": (-12.0, 0.01), "start_t_logit_normal": (12.0, 0.01)}  # t = 0, t = 999
    np.testing.assert_array_equal(weighting.tuple_timesteps(key, batch, 1000, objective), [999, 0, 999, 0, 999])
    dropped = np.array([True, False, False, True, False])  # text-only frames keep the main density
    np.testing.assert_array_equal(weighting.tuple_timesteps(key, batch, 1000, objective, dropped),
                                  [0, 0, 999, 0, 999])

    plain = {"t_logit_normal": (0.0, 1.0), "start_t_logit_normal": ()}
    main_draw = weighting.training_timesteps(key, 5, 1000, (0.0, 1.0))
    np.testing.assert_array_equal(weighting.tuple_timesteps(key, batch, 1000, plain), main_draw)
    np.testing.assert_array_equal(weighting.tuple_timesteps(key, {"target": batch["target"]}, 1000, plain), main_draw)
