"""ART·V model: built from a pretrained UNet it starts as exactly that UNet; anchor attention plumbing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.models import artv
from artv_jax.models.unet import UNet2DConditionModel, UNetConfig, count_transformer_blocks

TINY = UNetConfig(
    in_channels=4, out_channels=4, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=(1, 1), transformer_layers_per_block=(1, 1), num_attention_heads=(2, 2),
    cross_attention_dim=(8, 8), norm_num_groups=4,
)


def random_unet(key):
    unet = UNet2DConditionModel(TINY)
    params = unet.init(key, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 3, 8)))["params"]
    # Non-zero everywhere, so that a wrongly wired adapter would show.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return unet, tree.unflatten([0.2 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def inputs(key, r=1, batch=2, size=8):
    ks = jax.random.split(key, 5)
    return dict(
        x_t=jax.random.normal(ks[0], (batch, size, size, 4)),
        t=jnp.array([3, 700][:batch]),
        text=jax.random.normal(ks[1], (batch, 3, 8)),
        refs=jax.random.normal(ks[2], (batch, size, size, 4 * r)),
        anchor=jax.random.normal(ks[3], (batch, size, size, 4)),
        ref_level=jax.random.uniform(ks[4], (batch,)),
    )


@pytest.mark.parametrize("r", [1, 2])
def test_initial_model_is_the_pretrained_unet(r):
    """Zero-initialised adapter and m = sigmoid(10): the prediction is the base UNet's, for any references."""
    unet, unet_params = random_unet(jax.random.PRNGKey(0))
    model, params = artv.build_from_unet(unet, unet_params, artv.ArtVConfig(num_ref_frames=r), jax.random.PRNGKey(1))
    for seed in (2, 3):
        x = inputs(jax.random.PRNGKey(seed), r)
        base = unet.apply({"params": unet_params}, x["x_t"], x["t"], x["text"])
        pred, mask_logits = model.apply({"params": params}, **x)
        np.testing.assert_array_equal(np.asarray(pred), np.asarray(base))  # exactly: zero features
        m = jax.nn.sigmoid(mask_logits)
        np.testing.assert_allclose(np.asarray(m), 1.0, atol=5e-5)  # 1 - sigmoid(10) = 4.5e-5


def test_adapter_reaches_the_unet_once_trained():
    """Perturbing the adapter changes the prediction (the wiring is live), and drop_refs removes it again."""
    unet, unet_params = random_unet(jax.random.PRNGKey(0))
    model, params = artv.build_from_unet(unet, unet_params, artv.ArtVConfig(), jax.random.PRNGKey(1))
    leaves, tree = jax.tree.flatten(params["adapter"])
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = {**params, "adapter": tree.unflatten([l + 0.1 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])}
    x = inputs(jax.random.PRNGKey(2))
    base = unet.apply({"params": unet_params}, x["x_t"], x["t"], x["text"])
    pred, _ = model.apply({"params": params}, **x)
    assert np.abs(np.asarray(pred - base)).max() > 1e-3
    dropped, _ = model.apply({"params": params}, **x, drop_refs=jnp.array([True, False]))
    np.testing.assert_array_equal(np.asarray(dropped[0]), np.asarray(base[0]))
    np.testing.assert_array_equal(np.asarray(dropped[1]), np.asarray(pred[1]))


def test_anchor_attention_contexts():
    unet, unet_params = random_unet(jax.random.PRNGKey(0))
    config = artv.ArtVConfig(anchor_attention=True)
    model, params = artv.build_from_unet(unet, unet_params, config, jax.random.PRNGKey(1))
    x = inputs(jax.random.PRNGKey(2))
    ctx = artv.anchor_contexts(model, params, x["anchor"], x["text"])
    assert len(ctx) == sum(count_transformer_blocks(TINY)) == 4
    # Down block 0 at 8x8 with 16 channels, mid at 4x4 x 32, the last up block's two at 8x8 x 16.
    assert [c.shape for c in ctx] == [(2, 64, 16), (2, 16, 32), (2, 64, 16), (2, 64, 16)]
    base = unet.apply({"params": unet_params}, x["x_t"], x["t"], x["text"])
    without, _ = model.apply({"params": params}, **x)  # no contexts: no anchor attention (frame 0)
    np.testing.assert_array_equal(np.asarray(without), np.asarray(base))
    pred, _ = model.apply({"params": params}, **x, anchor_contexts=ctx)
    assert np.abs(np.asarray(pred - base)).max() > 1e-3  # the extra keys/values change attention
    # anchor_keep=False masks the anchor keys out exactly, per example
    kept, _ = model.apply({"params": params}, **x, anchor_contexts=ctx, anchor_keep=jnp.array([False, True]))
    np.testing.assert_allclose(np.asarray(kept[0]), np.asarray(base[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(kept[1]), np.asarray(pred[1]), atol=1e-5)


def test_anchor_attention_on_duplicate_keys_is_identity():
    """Self-attention over keys/values duplicated (softmax halves, values double) gives the same output.

    Feeding each block its own self-attention input as the "anchor" must
    therefore reproduce the plain output exactly: this pins the contexts to the
    right blocks, in the right order, concatenated to the keys and values.
    """
    unet, unet_params = random_unet(jax.random.PRNGKey(0))
    model, params = artv.build_from_unet(unet, unet_params, artv.ArtVConfig(), jax.random.PRNGKey(1))
    x = inputs(jax.random.PRNGKey(2))
    plain, state = model.apply({"params": params}, **x, mutable=["intermediates"])
    own = artv.collect_self_attn_inputs(state["intermediates"])
    with_anchor = model.clone(config=artv.ArtVConfig(anchor_attention=True))
    pred, _ = with_anchor.apply({"params": params}, **x, anchor_contexts=own)
    np.testing.assert_allclose(np.asarray(pred), np.asarray(plain[0]), atol=2e-5)
    shuffled = own[1:] + own[:1]  # a wrong order must not pass
    with pytest.raises(Exception):
        wrong, _ = with_anchor.apply({"params": params}, **x, anchor_contexts=shuffled)
        np.testing.assert_allclose(np.asarray(wrong), np.asarray(plain[0]), atol=2e-5)


def test_wrong_reference_count_raises():
    unet, unet_params = random_unet(jax.random.PRNGKey(0))
    model, params = artv.build_from_unet(unet, unet_params, artv.ArtVConfig(num_ref_frames=2), jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="refs must have 2 frames"):
        model.apply({"params": params}, **inputs(jax.random.PRNGKey(2), r=1))
