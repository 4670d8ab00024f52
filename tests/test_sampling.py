"""The autoregressive sampler: lax.scan against its Python-loop twin, modes, guidance, no recompilation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.diffusion import masked, sampling
from artv_jax.diffusion.schedule import NoiseSchedule
from artv_jax.models import artv
from artv_jax.models.unet import UNetConfig

UNET = UNetConfig(
    in_channels=4, out_channels=5, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=(1, 1), transformer_layers_per_block=(1, 1), num_attention_heads=(2, 2),
    cross_attention_dim=(8, 8), norm_num_groups=4,
)
SCHEDULE = NoiseSchedule.from_config(dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                          num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True))
SHAPE = (2, 8, 8, 4)


def make(r=1, anchor_attention=False, mask_bias=None, **sampler_kwargs):
    """A sampler and "trained" params; cached, so tests with equal settings share one compilation."""
    config = sampling.SamplerConfig(**{"num_steps": 3, "eta": 0.5, "text_guidance": 3.0, "ref_level": 0.1,
                                       "chunk_size": 2, **sampler_kwargs})
    return _sampler(r, anchor_attention, config), _params(r, anchor_attention, mask_bias)


@functools.lru_cache(maxsize=None)
def _model(r, anchor_attention):
    return artv.ArtV(UNET, artv.ArtVConfig(num_ref_frames=r, anchor_attention=anchor_attention))


@functools.lru_cache(maxsize=None)
def _sampler(r, anchor_attention, config):
    return sampling.Sampler(_model(r, anchor_attention), SCHEDULE, config)


@functools.lru_cache(maxsize=None)
def _params(r, anchor_attention, mask_bias):
    params = artv.init_params(_model(r, anchor_attention), jax.random.PRNGKey(0), 8, 8, text_len=3)
    # A "trained" model: random adapter and mask weights so every path matters.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = tree.unflatten([l + 0.05 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
    return params if mask_bias is None else artv.set_mask_bias(params, mask_bias)


def texts(n, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jnp.broadcast_to(jax.random.normal(k1, (2, 3, 8)), (n, 2, 3, 8)), jax.random.normal(k2, (2, 3, 8))


@pytest.mark.parametrize("r,anchor_attention,ref_guidance", [(1, False, 1.0), (2, True, 2.0)])
def test_scan_sampler_matches_python_loop(r, anchor_attention, ref_guidance):
    sampler, params = make(r, anchor_attention, ref_guidance=ref_guidance)
    conds, uncond = texts(5)
    key = jax.random.PRNGKey(7)
    fast = sampling.sample_video(sampler, params, key, conds, uncond, latent_shape=SHAPE, progress=False)
    slow = sampling.sample_video_reference(sampler, params, key, conds, uncond, latent_shape=SHAPE)
    assert fast.shape == (5, *SHAPE)
    np.testing.assert_allclose(fast, slow, atol=2e-4, rtol=1e-4)
    assert np.abs(fast[1] - fast[4]).max() > 1e-2  # frames differ: not a trivial match


def test_frames_do_not_depend_on_chunking_and_length_does_not_recompile():
    sampler, params = make(chunk_size=3, eta=0.0)
    conds, uncond = texts(16)
    key = jax.random.PRNGKey(3)
    short = sampling.sample_video(sampler, params, key, conds[:4], uncond, latent_shape=SHAPE, progress=False)
    traces = sampler.traces
    long = sampling.sample_video(sampler, params, key, conds, uncond, latent_shape=SHAPE, progress=False)
    assert traces == sampler.traces == 1  # 4 frames, then 16 frames: one compiled chunk program
    np.testing.assert_allclose(long[:4], short, atol=1e-5)
    other, p2 = make(eta=0.0)  # chunks of 2
    np.testing.assert_allclose(sampling.sample_video(other, p2, key, conds[:7], uncond, latent_shape=SHAPE,
                                                     progress=False), long[:7], atol=1e-4)


def test_image_to_video_and_continuation_keep_the_given_frames():
    sampler, params = make(r=2)
    conds, uncond = texts(6)
    key = jax.random.PRNGKey(5)
    video = sampling.sample_video(sampler, params, key, conds, uncond, latent_shape=SHAPE, progress=False)
    i2v = sampling.sample_video(sampler, params, key, conds, uncond, first_frames=video[:1], progress=False)
    np.testing.assert_array_equal(i2v[0], video[0])
    np.testing.assert_allclose(i2v, video, atol=1e-4)  # same frame 0 and same per-frame noise: same video
    cont = sampling.sample_video(sampler, params, key, conds, uncond, first_frames=video[:3], progress=False)
    np.testing.assert_array_equal(cont[:3], video[:3])
    np.testing.assert_allclose(cont[3:], video[3:], atol=1e-4)
    altered = video[:3].copy()
    altered[2] += 1.0  # continuation conditions on the given frames
    changed = sampling.sample_video(sampler, params, key, conds, uncond, first_frames=altered, progress=False)
    assert np.abs(changed[3] - video[3]).max() > 1e-3


def test_multi_prompt_schedule_is_causal():
    """Frames before a prompt switch are those of the single-prompt video; frames after it differ."""
    sampler, params = make()
    (a, uncond), (b, _) = texts(1, seed=0), texts(1, seed=1)
    schedule = sampling.prompt_schedule([a[0], b[0]], [3, 3])
    assert schedule.shape == (6, 2, 3, 8)
    key = jax.random.PRNGKey(9)
    both = sampling.sample_video(sampler, params, key, schedule, uncond, latent_shape=SHAPE, progress=False)
    only_a = sampling.sample_video(sampler, params, key, jnp.broadcast_to(a[0], (6, 2, 3, 8)), uncond,
                                   latent_shape=SHAPE, progress=False)
    np.testing.assert_allclose(both[:3], only_a[:3], atol=1e-5)
    assert np.abs(both[3] - only_a[3]).max() > 1e-3
    with pytest.raises(ValueError, match="positive"):
        sampling.prompt_schedule([a[0]], [0])
    with pytest.raises(ValueError, match="as many"):
        sampling.prompt_schedule([a[0], b[0]], [3])


def test_guidance_with_equal_branches_is_the_conditional_sample():
    """If the empty prompt equals the prompt, any text_guidance gives the unguided sample."""
    conds, uncond = texts(4)
    key = jax.random.PRNGKey(2)
    s1, params = make(text_guidance=1.0)
    s2, _ = make()  # text_guidance 3
    base = sampling.sample_video(s1, params, key, conds, uncond, latent_shape=SHAPE, progress=False)
    same = sampling.sample_video(s2, params, key, conds, conds[0], latent_shape=SHAPE, progress=False)
    np.testing.assert_allclose(same, base, atol=1e-4)
    guided = sampling.sample_video(s2, params, key, conds, uncond, latent_shape=SHAPE, progress=False)
    assert np.abs(guided - base).max() > 1e-2


def test_mask_zero_copies_the_previous_frame():
    """m = 0 means x0 = x_ref at every step; deterministic DDIM then ends exactly on the reference."""
    sampler, params = make(mask_bias=-100.0, eta=0.0, ref_level=0.0)
    conds, uncond = texts(5)
    first = jax.random.normal(jax.random.PRNGKey(4), (1, *SHAPE))
    video = sampling.sample_video(sampler, params, jax.random.PRNGKey(0), conds, uncond, first_frames=first,
                                  progress=False)
    for frame in video[1:]:
        np.testing.assert_allclose(frame, video[0], atol=1e-4)


def test_ablation_switches_follow_training():
    """use_mask=False is m = 1 whatever the mask head says; use_anchor=False is a zero anchor."""
    conds, uncond = texts(3)
    first = jax.random.normal(jax.random.PRNGKey(4), (1, *SHAPE))
    run = lambda s, p: sampling.sample_video(s, p, jax.random.PRNGKey(0), conds, uncond, first_frames=first,
                                             progress=False)
    no_mask, copying = make(mask_bias=-100.0, use_mask=False)
    trusting, ones = make(mask_bias=100.0)  # sigmoid(100) is exactly 1 in float32
    np.testing.assert_allclose(run(no_mask, copying), run(trusting, ones), atol=1e-5)

    sampler, params = make()
    no_anchor, _ = make(use_anchor=False)
    x = jax.random.normal(jax.random.PRNGKey(5), SHAPE)
    window, anchor = first[0], jax.random.normal(jax.random.PRNGKey(6), SHAPE)
    noise = jnp.zeros_like(window)
    args = (params, x, 500, conds[0], uncond)
    want = sampler.guided_output(*args, window, jnp.zeros_like(anchor), noise, False, None)
    np.testing.assert_array_equal(no_anchor.guided_output(*args, window, anchor, noise, False, None), want)
    assert np.abs(sampler.guided_output(*args, window, anchor, noise, False, None) - want).max() > 1e-4


def test_bad_inputs_raise():
    sampler, params = make()
    conds, uncond = texts(3)
    with pytest.raises(ValueError, match="latent_shape"):
        sampling.sample_video(sampler, params, jax.random.PRNGKey(0), conds, uncond, progress=False)
    with pytest.raises(ValueError, match="4 given frames for a video of 3"):
        sampling.sample_video(sampler, params, jax.random.PRNGKey(0), conds, uncond,
                              first_frames=np.zeros((4, *SHAPE)), progress=False)
    with pytest.raises(ValueError):
        dataclasses.replace(sampler.config, ref_level=2.0)


def _branch(sampler, params, x, t, text, window, anchor, ref_noise, drop: bool, level: float):
    """One guidance branch by a direct call of the model: references noised to `level` (or dropped), blended."""
    b = x.shape[0]
    refs = masked.augment_at_level(SCHEDULE, window, ref_noise, jnp.full((b,), level))
    pred, logits = sampler.model.apply({"params": params}, x, jnp.full((b,), t), text, refs, anchor,
                                       jnp.full((b,), level), drop_refs=jnp.full((b,), drop))
    mask = jnp.ones_like(logits) if drop else jax.nn.sigmoid(logits)
    return masked.blend_prediction(SCHEDULE, pred, mask, x, jnp.full((b,), t), window[..., -4:])


@pytest.mark.parametrize("ref_guidance,history_level", [(1.0, 1.0), (2.5, 1.0), (2.5, 0.6)])
def test_history_guidance_against_direct_model_calls(ref_guidance, history_level):
    """e = e_0w + w_r (e_0r - e_0w) + w_t (e_tr - e_0r): the weaker history e_0w is none (references dropped)
    at history_level 1 and the references noised to history_level below it; at w_r = 1 the formula is plain
    text guidance, which the sampler computes without the third branch."""
    sampler, params = make(ref_guidance=ref_guidance, history_level=history_level)
    cond, uncond = texts(1)
    cond = cond[0]
    k = jax.random.split(jax.random.PRNGKey(4), 4)
    x, window, anchor = (jax.random.normal(k[i], SHAPE) for i in range(3))
    ref_noise = jax.random.normal(k[3], SHAPE)
    t = 500
    got = sampler.guided_output(params, x, t, cond, uncond, window, anchor, ref_noise, False, None)
    branch = functools.partial(_branch, sampler, params, x, t, window=window, anchor=anchor, ref_noise=ref_noise)
    e_tr = branch(cond, drop=False, level=0.1)
    e_0r = branch(uncond, drop=False, level=0.1)
    e_0w = branch(uncond, drop=True, level=0.1) if history_level == 1.0 else branch(uncond, drop=False,
                                                                                      level=history_level)
    want = e_0w + ref_guidance * (e_0r - e_0w) + 3.0 * (e_tr - e_0r)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    if ref_guidance == 1.0:  # exactly plain text guidance, whatever the weaker history would have been
        np.testing.assert_array_equal(got, make(history_level=0.6)[0].guided_output(
            params, x, t, cond, uncond, window, anchor, ref_noise, False, None))
    else:  # the third branch matters, and the weaker history's level with it
        assert np.abs(np.asarray(got) - np.asarray(e_0r + 3.0 * (e_tr - e_0r))).max() > 1e-3
        if history_level < 1.0:
            none = branch(uncond, drop=True, level=0.1)
            assert np.abs(np.asarray(e_0w - none)).max() > 1e-3


def test_history_level_is_checked():
    with pytest.raises(ValueError, match="history_level"):
        sampling.SamplerConfig(ref_level=0.2, history_level=0.1)
    with pytest.raises(ValueError, match="history_level"):
        sampling.SamplerConfig(history_level=1.5)
