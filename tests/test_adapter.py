"""The reference adapter against diffusers' `T2IAdapter(adapter_type="full_adapter")`; ART·V's zero init."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from artv_jax import weights
from artv_jax.models import adapter
from artv_jax.models.layers import pixel_shuffle, pixel_unshuffle
from helpers import randomize

# name -> (T2IAdapter kwargs, input size). Tiny, but every code path: the ART·V latent adapter
# (R = 1, no unshuffle), an SD-like unshuffle by 8 with 4 res blocks, odd sizes (ceil-mode
# pooling), and stages without any parameters (num_res_blocks = 0, equal channels).
CONFIGS = {
    "latent_r1": (dict(in_channels=adapter.adapter_in_channels(1), channels=[16, 32, 32, 32], num_res_blocks=2,
                       downscale_factor=1), 16),
    "unshuffle_8": (dict(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=4, downscale_factor=8), 64),
    "unshuffle_4_odd": (dict(in_channels=3, channels=[8, 16, 24], num_res_blocks=1, downscale_factor=4), 20),
    "no_resnets": (dict(in_channels=5, channels=[8, 8, 16], num_res_blocks=0, downscale_factor=2), 14),
}


def save(tmp_path, name, seed=3):
    """A diffusers T2IAdapter with random non-zero weights (biases included), saved with `save_pretrained`."""
    torch.manual_seed(seed)
    model = randomize(diffusers.T2IAdapter(adapter_type="full_adapter", **CONFIGS[name][0]).eval(), seed=seed)
    model.save_pretrained(tmp_path / name)
    return model, str(tmp_path / name)


def torch_features(model, x_nhwc):
    with torch.no_grad():
        return [f.numpy().transpose(0, 2, 3, 1) for f in model(torch.from_numpy(np.ascontiguousarray(
            x_nhwc.transpose(0, 3, 1, 2))))]


def relative_error(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adapter_matches_diffusers(tmp_path, name):
    kwargs, size = CONFIGS[name]
    model, path = save(tmp_path, name)
    module, params = adapter.load_adapter(path)
    assert module.total_downscale_factor == model.total_downscale_factor
    x = np.random.default_rng(0).standard_normal((2, size, size, kwargs["in_channels"])).astype(np.float32)
    want = torch_features(model, x)
    got = jax.jit(module.apply)({"params": params}, jnp.asarray(x))
    assert len(got) == len(want) == len(kwargs["channels"])
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == jnp.float32
        err = relative_error(g, w)
        print(f"{name}: feature {w.shape} (NHWC) max |diff| / max |ref| = {err:.2e}")
        assert err <= 1e-4


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_pixel_unshuffle_and_shuffle_match_torch(factor):
    x = np.arange(2 * 3 * 12 * 24, dtype=np.float32).reshape(2, 3, 12, 24)  # distinct values: any mix-up shows
    want = torch.nn.PixelUnshuffle(factor)(torch.from_numpy(x)).numpy()
    got = adapter.pixel_unshuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), factor)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)
    back = pixel_shuffle(got, factor)
    np.testing.assert_array_equal(np.asarray(back), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(torch.nn.PixelShuffle(factor)(torch.from_numpy(want)).numpy(), x)
    assert pixel_unshuffle is adapter.pixel_unshuffle


@pytest.mark.parametrize("shape", [(8, 6), (7, 5), (1, 3)])
def test_avg_pool_ceil_matches_torch(shape):
    x = np.random.default_rng(1).standard_normal((2, 3) + shape).astype(np.float32)
    want = torch.nn.AvgPool2d(2, 2, ceil_mode=True)(torch.from_numpy(x)).numpy()
    got = adapter.avg_pool_ceil(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-6, atol=1e-6)


def random_params(module, size, seed=0):
    """Flax params with every leaf random (NumPy over `eval_shape`: fast, and biases non-zero too)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, module.in_channels)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), jnp.float32), shapes["params"])


def test_export_roundtrip_loads_into_diffusers(tmp_path):
    """Our params -> `adapter_state_dict` -> `T2IAdapter.load_state_dict(strict=True)` -> same features,
    and the exported directory reads back into the same params."""
    module = adapter.FullAdapter(in_channels=9, channels=(16, 32, 32), num_res_blocks=2, downscale_factor=2,
                                 zero_init_output=False)
    params = random_params(module, 8)
    config = adapter.adapter_config_dict(module)
    model = diffusers.T2IAdapter(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    state = adapter.adapter_state_dict(params)
    assert all(k.startswith("adapter.") for k in state) and "adapter.conv_in.weight" in state
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    x = np.random.default_rng(1).standard_normal((2, 12, 12, 9)).astype(np.float32)
    want = torch_features(model, x)
    got = jax.jit(module.apply)({"params": params}, jnp.asarray(x))
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    print(f"export roundtrip: max |diff| / max |ref| per stage = {['%.1e' % e for e in errors]}")
    assert max(errors) <= 1e-5
    model.save_pretrained(tmp_path / "exported")
    saved = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert saved["_class_name"] == "T2IAdapter" and saved["channels"] == [16, 32, 32]
    loaded_module, loaded = adapter.load_adapter(str(tmp_path / "exported"))
    assert loaded_module == module
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, params)


def test_zero_init_outputs_exactly_zero_and_still_learns():
    module = adapter.FullAdapter(in_channels=9, channels=(8, 16, 16), num_res_blocks=2, downscale_factor=1)
    # NumPy for the random arrays and an "rbg" key for the init: on CPU each threefry-random
    # shape costs seconds to compile, and the zero-init property does not depend on the key.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 9)), jnp.float32)
    key = jax.random.key(0, impl="rbg")
    params = module.init(key, x)["params"]
    apply = jax.jit(module.apply)
    features = apply({"params": params}, x)
    assert [f.shape for f in features] == [(2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 16)]
    for f in features:
        assert np.all(np.asarray(f) == 0.0)
    # Only conv_in's kernel (and the biases, Flax's default) start at zero; the rest is random.
    flat = traverse_util.flatten_dict(params)
    assert all(np.all(np.asarray(v) == 0) == (k[-1] == "bias" or k[0] == "conv_in") for k, v in flat.items())
    off = module.clone(zero_init_output=False).init(key, x)["params"]
    assert np.abs(np.asarray(off["conv_in"]["kernel"])).max() > 0
    for f in jax.jit(module.clone(dtype=jnp.bfloat16).apply)({"params": params}, x):
        assert f.dtype == jnp.bfloat16 and np.all(np.asarray(f, np.float32) == 0.0)

    targets = [jnp.asarray(rng.standard_normal(f.shape), jnp.float32) for f in features]

    @jax.jit
    def grad(p):
        return jax.grad(lambda p: sum(jnp.sum((f - t) ** 2) for f, t in zip(module.apply({"params": p}, x), targets)))(p)

    def nonzero(g):
        return {"/".join(k): bool(np.any(np.asarray(v) != 0)) for k, v in
                traverse_util.flatten_dict(g).items()}

    # Step 0: exactly the gradients the docstring promises are non-zero, the others exactly zero.
    g0 = nonzero(grad(params))
    live = {k for k, v in g0.items() if v}
    expected = {k for k in g0 if k.startswith("conv_in/") or k.endswith("in_conv/bias") or k.endswith("block2/bias")}
    assert live == expected, sorted(live ^ expected)
    # One SGD step later the features move and every parameter gets a gradient.
    stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grad(params))
    assert all(np.abs(np.asarray(f)).max() > 0 for f in apply({"params": stepped}, x))
    assert all(nonzero(grad(stepped)).values())

    # Zero biases: everything after conv_in is positively homogeneous, so conv_in acts as an output gain.
    random_kernel = {**params, "conv_in": {**params["conv_in"], "kernel": jnp.asarray(
        rng.standard_normal(params["conv_in"]["kernel"].shape), jnp.float32)}}
    scaled = {**random_kernel, "conv_in": {**random_kernel["conv_in"], "kernel": 0.5 * random_kernel["conv_in"]["kernel"]}}
    for f, h in zip(apply({"params": random_kernel}, x), apply({"params": scaled}, x)):
        np.testing.assert_allclose(np.asarray(h), 0.5 * np.asarray(f), rtol=1e-5, atol=1e-6)


def test_noise_level_plane():
    plane = adapter.noise_level_plane(jnp.array([0.0, 0.25, 1.0]), (3, 4, 5, 8))
    assert plane.shape == (3, 4, 5, 1) and plane.dtype == jnp.float32
    np.testing.assert_array_equal(plane[:, 0, 0, 0], [0.0, 0.25, 1.0])
    assert bool(jnp.all(plane == plane[:, :1, :1]))
    np.testing.assert_array_equal(adapter.noise_level_plane(0.1, (2, 3, 3)), np.full((2, 3, 3, 1), 0.1, np.float32))


def test_adapter_input_layout():
    refs = jnp.ones((2, 4, 4, 8))
    anchor = 2 * jnp.ones((2, 4, 4, 4))
    x = adapter.adapter_input(refs, anchor, jnp.array([0.25, 0.5]))
    assert x.shape == (2, 4, 4, adapter.adapter_in_channels(2)) == (2, 4, 4, 13)
    np.testing.assert_array_equal(np.asarray(x[..., :8]), 1.0)
    np.testing.assert_array_equal(np.asarray(x[..., 8:12]), 2.0)
    np.testing.assert_array_equal(np.asarray(x[0, ..., 12]), 0.25)
    np.testing.assert_array_equal(np.asarray(x[1, ..., 12]), 0.5)
    # A list of R latents is concatenated in order; a scalar level fills every example's plane.
    r0, r1 = jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3))
    y = adapter.adapter_input([r0, r1], 3 * jnp.ones((2, 4, 4, 3)), 0.1, latent_channels=3)
    assert y.shape == (2, 4, 4, adapter.adapter_in_channels(2, latent_channels=3)) == (2, 4, 4, 10)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(
        adapter.adapter_input(jnp.concatenate([r0, r1], -1), 3 * jnp.ones((2, 4, 4, 3)), jnp.full((2,), 0.1))))
    np.testing.assert_array_equal(np.asarray(y[..., 3:6]), 1.0)
    np.testing.assert_allclose(np.asarray(y[..., 9]), 0.1)
    with pytest.raises(ValueError, match="anchor must be"):
        adapter.adapter_input(refs, anchor, 0.0, latent_channels=3)
    with pytest.raises(ValueError, match="refs must be"):
        adapter.adapter_input(jnp.ones((2, 4, 4, 6)), anchor, 0.0)
    with pytest.raises(ValueError, match="refs must be"):
        adapter.adapter_input(jnp.ones((2, 4, 5, 8)), anchor, 0.0)


def test_input_shape_errors():
    module = adapter.FullAdapter(in_channels=3, channels=(8,), num_res_blocks=1, downscale_factor=4)
    with pytest.raises(ValueError, match="3\\) input"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="not divisible by downscale_factor 4"):
        module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 6, 3)))
    with pytest.raises(ValueError, match="channels"):
        adapter.FullAdapter(in_channels=3, channels=()).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def test_strict_loading_errors_name_the_keys(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = save(tmp_path, "latent_r1")
    file = f"{path}/diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["adapter.body.1.in_conv.bias"]
    state["adapter.body.0.resnets.0.block2.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    state["conv_in.weight"] = state["adapter.conv_in.weight"]  # a key without diffusers' prefix
    state["adapter.body.0.resnets.2.block1.bias"] = np.zeros((16,), np.float32)
    save_file(state, file)
    with pytest.raises(weights.WeightMappingError) as info:
        adapter.load_adapter(path)
    assert info.value.missing == ["adapter.body.1.in_conv.bias"]
    assert info.value.unexpected == ["adapter.body.0.resnets.2.block1.bias", "conv_in.weight"]
    assert [m[0] for m in info.value.misshaped] == ["adapter.body.0.resnets.0.block2.weight"]
    message = str(info.value)
    for key in ("adapter.body.1.in_conv.bias", "conv_in.weight", "adapter.body.0.resnets.0.block2.weight"):
        assert key in message
    print(message)


def test_config_errors():
    for adapter_type in ("light_adapter", "full_adapter_xl"):
        with pytest.raises(NotImplementedError, match=f"adapter_type='{adapter_type}'"):
            adapter.adapter_from_config({"adapter_type": adapter_type})
    with pytest.raises(NotImplementedError, match="_class_name='MultiAdapter'"):
        adapter.adapter_from_config({"_class_name": "MultiAdapter"})
    with pytest.raises(NotImplementedError, match="unknown_key"):
        adapter.adapter_from_config({"unknown_key": 1})
    with pytest.raises(ValueError, match="channels"):
        adapter.adapter_from_config({"channels": [8, 0]})
    with pytest.raises(ValueError, match="num_res_blocks"):
        adapter.adapter_from_config({"num_res_blocks": -1})
    module = adapter.adapter_from_config({"_class_name": "T2IAdapter", "_diffusers_version": "0.42.1"})
    assert (module.in_channels, module.channels, module.num_res_blocks, module.downscale_factor) == (
        3, (320, 640, 1280, 1280), 2, 8)
    assert adapter.adapter_from_config(adapter.adapter_config_dict(module)) == module
