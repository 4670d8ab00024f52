"""UNet parity: tiny random diffusers `UNet2DConditionModel`s, saved and loaded with `load_unet`."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from artv_jax import pretrained, weights
from artv_jax.models.unet import UNetConfig
from helpers import randomize

SD1_LIKE = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=32,
    norm_num_groups=8,
    sample_size=16,
)
SD2_LIKE = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=[2, 4, 4],
    use_linear_projection=True,
    upcast_attention=True,
    cross_attention_dim=24,
    norm_num_groups=8,
    sample_size=16,
)
ODD = dict(
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=(1, 2, 1),
    transformer_layers_per_block=(2, 1, 1),
    attention_head_dim=(2, 2, 4),
    cross_attention_dim=(16, 16, 16),
    norm_num_groups=4,
    flip_sin_to_cos=False,
    freq_shift=1,
    in_channels=5,
    out_channels=3,
    mid_block_scale_factor=0.5,
    sample_size=9,
)
# The shapes default's options: the pooled text joins the timestep embedding, which the ResNets apply as scale
# and shift (the mid block's too).
TEXT_SCALE_SHIFT = dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D",) * 2,
    up_block_types=("CrossAttnUpBlock2D",) * 2,
    layers_per_block=1,
    attention_head_dim=4,
    cross_attention_dim=16,
    norm_num_groups=8,
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
    resnet_time_scale_shift="scale_shift",
    sample_size=8,
)
CONFIGS = {"sd1_like": SD1_LIKE, "sd2_like": SD2_LIKE, "odd_sizes_lists": ODD, "text_scale_shift": TEXT_SCALE_SHIFT}


def save_unet(tmp_path, config, seed=0):
    model = randomize(diffusers.UNet2DConditionModel(**config).eval(), seed)
    path = tmp_path / "unet"
    model.save_pretrained(path)
    return model, str(path)


def inputs(config, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    size = config["sample_size"]
    in_ch = config.get("in_channels", 4)
    ctx = config["cross_attention_dim"]
    ctx = ctx if isinstance(ctx, int) else ctx[0]
    sample = rng.standard_normal((batch, in_ch, size, size)).astype(np.float32)
    t = np.array([10, 873][:batch])
    text = rng.standard_normal((batch, 7, ctx)).astype(np.float32)
    return sample, t, text


def run_ours(path, sample, t, text, **kwargs):
    module, params = pretrained.load_unet(path)
    out = module.apply({"params": params}, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(text), **kwargs)
    return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet_matches_diffusers(tmp_path, name):
    config = CONFIGS[name]
    model, path = save_unet(tmp_path, config)
    sample, t, text = inputs(config)
    with torch.no_grad():
        want = model(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(text)).sample.numpy()
    got = run_ours(path, sample, t, text)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    print(f"{name}: max |diff| / scale = {err:.2e} (output scale {np.abs(want).max():.2f})")
    assert got.shape == want.shape
    assert err <= 1e-4


def test_adapter_residuals_match_diffusers(tmp_path):
    """Adapter features enter where diffusers adds `down_intrablock_additional_residuals`."""
    config = SD1_LIKE
    model, path = save_unet(tmp_path, config)
    sample, t, text = inputs(config)
    rng = np.random.default_rng(3)
    # One map per down block at that block's output resolution (after its downsampler
    # for blocks without attention, before it for cross-attention blocks).
    shapes = [(2, 32, 16, 16), (2, 64, 8, 8)]
    feats = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    with torch.no_grad():
        want = model(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(text),
                     down_intrablock_additional_residuals=[torch.from_numpy(f) for f in feats]).sample.numpy()
        plain = model(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(text)).sample.numpy()
    got = run_ours(path, sample, t, text, adapter_features=[jnp.asarray(f.transpose(0, 2, 3, 1)) for f in feats])
    assert np.abs(want - plain).max() > 1e-2  # the residuals matter
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    print(f"adapter residuals: max |diff| / scale = {err:.2e}")
    assert err <= 1e-4


def test_bf16_load_is_close(tmp_path):
    model, path = save_unet(tmp_path, SD1_LIKE)
    sample, t, text = inputs(SD1_LIKE)
    module, params = pretrained.load_unet(path, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    out = module.apply({"params": params}, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(text))
    with torch.no_grad():
        want = model(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(text)).sample.numpy()
    got = np.asarray(out, dtype=np.float32).transpose(0, 3, 1, 2)
    rel = np.abs(got - want).mean() / np.abs(want).mean()
    print(f"bf16 mean relative error {rel:.3e}")
    assert rel < 0.05


def test_remat_gives_same_output_and_gradients(tmp_path):
    _, path = save_unet(tmp_path, SD1_LIKE)
    sample, t, text = inputs(SD1_LIKE)
    module, params = pretrained.load_unet(path)
    remat = module.clone(remat=True)
    x = jnp.asarray(sample.transpose(0, 2, 3, 1))
    loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, x, jnp.asarray(t), jnp.asarray(text)) ** 2)
    (l0, g0), (l1, g1) = (jax.value_and_grad(loss(m))(params) for m in (module, remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


def test_unsupported_config_values_raise_naming_the_key():
    with pytest.raises(NotImplementedError, match="class_embed_type='timestep'"):
        UNetConfig.from_diffusers({**SD1_LIKE, "class_embed_type": "timestep"})
    with pytest.raises(NotImplementedError, match="resnet_time_scale_shift='ada_group'"):
        UNetConfig.from_diffusers({**SD1_LIKE, "resnet_time_scale_shift": "ada_group"})
    with pytest.raises(NotImplementedError, match="addition_embed_type='text_time'"):
        UNetConfig.from_diffusers({**SD1_LIKE, "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="addition_embed_type_num_heads=64"):
        UNetConfig.from_diffusers({**SD1_LIKE, "addition_embed_type": "text"})  # 32 wide text, 64 heads
    with pytest.raises(NotImplementedError, match="mystery_option"):
        UNetConfig.from_diffusers({**SD1_LIKE, "mystery_option": 3})
    with pytest.raises(NotImplementedError, match="AttnDownBlock2D"):
        UNetConfig.from_diffusers({**SD1_LIKE, "down_block_types": ("AttnDownBlock2D", "DownBlock2D")})


def test_legacy_head_naming():
    """diffusers' `attention_head_dim` is the number of heads; `num_attention_heads` wins when set."""
    assert UNetConfig.from_diffusers(SD2_LIKE).num_attention_heads == (2, 4, 4)
    assert UNetConfig.from_diffusers({**SD1_LIKE, "num_attention_heads": 4}).num_attention_heads == (4, 4)


def test_strict_loading_names_every_offending_key(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = save_unet(tmp_path, SD1_LIKE)
    file = f"{path}/diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["down_blocks.0.attentions.0.proj_in.weight"]
    del state["conv_out.bias"]
    state["down_blocks.0.extra.weight"] = np.zeros(3, np.float32)
    state["time_embedding.linear_1.weight"] = np.zeros((5, 5), np.float32)
    save_file(state, file)
    with pytest.raises(weights.WeightMappingError) as info:
        pretrained.load_unet(path)
    e = info.value
    assert e.missing == ["conv_out.bias", "down_blocks.0.attentions.0.proj_in.weight"]
    assert e.unexpected == ["down_blocks.0.extra.weight"]
    assert [m[0] for m in e.misshaped] == ["time_embedding.linear_1.weight"]
    for key in ("conv_out.bias", "down_blocks.0.attentions.0.proj_in.weight", "down_blocks.0.extra.weight",
                "time_embedding.linear_1.weight"):
        assert key in str(e)


def test_text_scale_shift_config_exports_to_diffusers():
    """Our config and parameters written the export's way load strictly into diffusers and compute the same
    (diffusers' TextTimeEmbedding needs one cross_attention_dim, which the export writes for uniform lists)."""
    from artv_jax import export
    from artv_jax.models.unet import UNet2DConditionModel

    config = UNetConfig.from_diffusers(TEXT_SCALE_SHIFT)
    assert UNetConfig.from_diffusers(config.to_diffusers()) == config
    sample, t, text = inputs(TEXT_SCALE_SHIFT)
    module = UNet2DConditionModel(config)
    x = jnp.asarray(sample.transpose(0, 2, 3, 1))
    params = module.init(jax.random.PRNGKey(0), x, jnp.asarray(t), jnp.asarray(text))["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)  # no zeros
    model = diffusers.UNet2DConditionModel.from_config(export.unet_config_dict(config)).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.to_state_dict(params).items()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        want = model(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(text)).sample.numpy()
    got = np.asarray(module.apply({"params": params}, x, jnp.asarray(t), jnp.asarray(text))).transpose(0, 3, 1, 2)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    print(f"text_scale_shift export: max |diff| / scale = {err:.2e}")
    assert err <= 1e-4
