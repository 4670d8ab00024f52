"""generate.generate_batches: fixed-size batches keyed by their start offset, the last one padded and trimmed."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from artv_jax import generate

PROMPTS = ("a red square moving right on a black background", "a blue circle moving up on a white background",
           "a yellow triangle moving left on a gray background")


@pytest.fixture(scope="module")
def tiny():
    """Components, random parameters and a 2-step sampler of a tiny shapes-world model (no training)."""
    from train_worker import tiny_config

    from artv_jax import components as components_lib, config as config_lib

    config = tiny_config(num_steps=1, checkpoint_every=1)
    config.sample.num_steps = 2
    config = config_lib.validate(config)
    comps, _ = components_lib.build(config)
    params = comps.init(jax.random.PRNGKey(0))
    return comps, params, generate.make_sampler(comps, config.sample, config.model)


def test_last_batch_is_padded_by_its_last_video_and_keyed_by_its_start(tiny):
    comps, params, sampler = tiny
    key = jax.random.PRNGKey(3)
    size = comps.frame_size
    first = np.random.default_rng(0).integers(0, 256, (3, 1, size, size, 3), dtype=np.uint8)  # image-to-video
    got = list(generate.generate_batches(comps, params, sampler, PROMPTS, 3, key, batch=2, first_frames=first))
    assert [v.shape for v in got] == [(2, 3, size, size, 3), (1, 3, size, size, 3)]

    # By hand: batch [0, 2) with fold_in(key, 0); batch [2, 3) padded to 2 with video 2, with fold_in(key, 2).
    head = generate.generate(comps, params, sampler, list(PROMPTS[:2]), 3, jax.random.fold_in(key, 0),
                             first_frames=first[:2])
    tail = generate.generate(comps, params, sampler, [PROMPTS[2]] * 2, 3, jax.random.fold_in(key, 2),
                             first_frames=first[[2, 2]])
    np.testing.assert_array_equal(got[0], head)
    np.testing.assert_array_equal(got[1], tail[:1])
    np.testing.assert_array_equal(got[1][:, 0], first[2:, 0])  # the given frame is kept
    # Noise is drawn per element (threefry partitionable), so padding leaves the real videos as an unpadded
    # batch makes them: the same noise as before batches were padded. XLA may pick other kernels for another
    # batch size (on some CPUs a pixel then rounds the other way), so the same video is within one level;
    # another key's noise gives a different video.
    alone = generate.generate(comps, params, sampler, [PROMPTS[2]], 3, jax.random.fold_in(key, 2),
                              first_frames=first[2:])
    off = np.abs(got[1].astype(int) - alone.astype(int))
    assert off.max() <= 1 and (off > 0).mean() < 0.01, (off.max(), (off > 0).mean())
    other_key = generate.generate(comps, params, sampler, [PROMPTS[2]], 3, jax.random.fold_in(key, 3),
                                  first_frames=first[2:])
    assert np.abs(other_key[:, 1:].astype(int) - alone[:, 1:].astype(int)).mean() > 5

    everything = generate.generate_all(comps, params, sampler, PROMPTS, 3, key, batch=2, first_frames=first)
    np.testing.assert_array_equal(everything, np.concatenate(got))
    with pytest.raises(ValueError, match="first frames are given for 2 videos, prompts for 3"):
        next(generate.generate_batches(comps, params, sampler, PROMPTS, 3, key, batch=2, first_frames=first[:2]))


def test_teacher_forced_frames_are_one_step_continuations_of_the_true_video():
    """Frame t of a teacher-forced video is the frame a continuation of the true frames 0..t-1 generates (the
    last R true frames as references, R = 2 so frame 1's window repeats frame 0); frame 0 is the true one."""
    from train_worker import tiny_config

    from artv_jax import components as components_lib, config as config_lib

    config = tiny_config(num_steps=1, checkpoint_every=1)
    config.model.artv.num_ref_frames = 2
    config.sample.num_steps = 2
    config = config_lib.validate(config)
    comps, _ = components_lib.build(config)
    params = comps.init(jax.random.PRNGKey(1))
    sampler = generate.make_sampler(comps, config.sample, config.model)
    size, key = comps.frame_size, jax.random.PRNGKey(7)
    true = np.random.default_rng(1).integers(0, 256, (2, 4, size, size, 3), dtype=np.uint8)
    got = generate.generate(comps, params, sampler, list(PROMPTS[:2]), 4, key, first_frames=true, teacher_forced=True)
    np.testing.assert_array_equal(got[:, 0], true[:, 0])
    for t in (1, 2, 3):
        want = generate.generate(comps, params, sampler, list(PROMPTS[:2]), t + 1, key, first_frames=true[:, :t])
        # the scan and the single jitted step may round differently in the last bit: at most 1 in uint8
        assert np.abs(got[:, t].astype(int) - want[:, t].astype(int)).max() <= 1, t
    assert np.abs(got[:, 2].astype(int) - got[:, 1].astype(int)).max() > 0  # frames differ: the test can fail
    with pytest.raises(ValueError, match="the whole true video"):
        generate.generate(comps, params, sampler, list(PROMPTS[:2]), 4, key, first_frames=true[:, :1],
                          teacher_forced=True)
