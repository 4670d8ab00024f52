"""The reference adapter against diffusers' `T2IAdapter(adapter_type="full_adapter")`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from artv_jax import weights
from artv_jax.models import adapter
from helpers import randomize

CONFIGS = {
    "latent_r1": dict(in_channels=9, channels=[16, 32, 32, 32], num_res_blocks=2, downscale_factor=1),
    "unshuffle_4_odd": dict(in_channels=3, channels=[8, 16, 24], num_res_blocks=1, downscale_factor=4),
}
SIZES = {"latent_r1": 16, "unshuffle_4_odd": 20}  # 20/4 = 5: odd sizes exercise ceil-mode pooling


def save(tmp_path, name):
    model = randomize(diffusers.T2IAdapter(adapter_type="full_adapter", **CONFIGS[name]).eval(), seed=3)
    model.save_pretrained(tmp_path / name)
    return model, str(tmp_path / name)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adapter_matches_diffusers(tmp_path, name):
    model, path = save(tmp_path, name)
    module, params = adapter.load_adapter(path)
    size = SIZES[name]
    x = np.random.default_rng(0).standard_normal((2, CONFIGS[name]["in_channels"], size, size)).astype(np.float32)
    with torch.no_grad():
        want = [f.numpy() for f in model(torch.from_numpy(x))]
    got = module.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = np.asarray(g).transpose(0, 3, 1, 2)
        assert g.shape == w.shape
        err = np.abs(g - w).max() / max(1.0, np.abs(w).max())
        print(f"{name}: feature {w.shape} max |diff| / scale = {err:.2e}")
        assert err <= 1e-4


def test_pixel_unshuffle_matches_torch():
    x = np.arange(2 * 3 * 8 * 12, dtype=np.float32).reshape(2, 3, 8, 12)
    want = torch.nn.PixelUnshuffle(4)(torch.from_numpy(x)).numpy()
    got = adapter.pixel_unshuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 4)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


def test_export_roundtrip_loads_into_diffusers(tmp_path):
    """Our params -> torch state dict -> `T2IAdapter.load_state_dict(strict=True)` -> same features."""
    module = adapter.FullAdapter(in_channels=9, channels=(16, 32), num_res_blocks=1, downscale_factor=1,
                                 zero_init=False)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 9)))["params"]
    state = {"adapter." + k: torch.from_numpy(v) for k, v in weights.to_state_dict(params).items()}
    config = adapter.adapter_config_dict(module)
    model = diffusers.T2IAdapter(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    model.load_state_dict(state, strict=True)
    x = np.random.default_rng(1).standard_normal((1, 9, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = [f.numpy() for f in model(torch.from_numpy(x))]
    got = module.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g).transpose(0, 3, 1, 2), w, atol=1e-5)


def test_zero_init_outputs_zero_and_still_learns():
    module = adapter.FullAdapter(in_channels=9, channels=(8, 16, 16), num_res_blocks=2, downscale_factor=1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 9))
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    for f in module.apply({"params": params}, x):
        assert np.all(np.asarray(f) == 0.0)
    target = [jax.random.normal(jax.random.PRNGKey(i), f.shape) for i, f in enumerate(module.apply({"params": params}, x))]
    loss = lambda p: sum(jnp.sum((f - t) ** 2) for f, t in zip(module.apply({"params": p}, x), target))
    grads = jax.grad(loss)(params)
    assert np.abs(np.asarray(grads["conv_in"]["kernel"])).max() > 0  # gradients reach the zeroed conv
    # one SGD step makes the features non-zero
    stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    assert any(np.abs(np.asarray(f)).max() > 0 for f in module.apply({"params": stepped}, x))


def test_adapter_input_layout():
    refs = jnp.ones((2, 4, 4, 8))
    anchor = 2 * jnp.ones((2, 4, 4, 4))
    x = adapter.adapter_input(refs, anchor, jnp.array([0.25, 0.5]))
    assert x.shape == (2, 4, 4, 13)
    np.testing.assert_array_equal(np.asarray(x[..., :8]), 1.0)
    np.testing.assert_array_equal(np.asarray(x[..., 8:12]), 2.0)
    np.testing.assert_array_equal(np.asarray(x[0, ..., 12]), 0.25)
    np.testing.assert_array_equal(np.asarray(x[1, ..., 12]), 0.5)


def test_strict_loading_and_config_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = save(tmp_path, "latent_r1")
    file = f"{path}/diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["adapter.body.1.in_conv.bias"]
    state["adapter.body.0.resnets.0.block2.weight"] = np.zeros((16, 16, 3, 3), np.float32)
    save_file(state, file)
    with pytest.raises(weights.WeightMappingError) as info:
        adapter.load_adapter(path)
    assert info.value.missing == ["adapter.body.1.in_conv.bias"]
    assert [m[0] for m in info.value.misshaped] == ["adapter.body.0.resnets.0.block2.weight"]
    with pytest.raises(NotImplementedError, match="adapter_type='light_adapter'"):
        adapter.adapter_from_config({"adapter_type": "light_adapter"})
