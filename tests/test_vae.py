"""VAE parity: tiny random diffusers `AutoencoderKL`s, saved and loaded with `load_vae`."""

import numpy as np
import pytest
import jax.numpy as jnp

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from artv_jax import pretrained, weights
from artv_jax.models.vae import VAEConfig
from helpers import randomize

BASE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=16,
)
CONFIGS = {
    "sd_like": BASE,
    "three_levels": {**BASE, "block_out_channels": (8, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 3,
                     "up_block_types": ("UpDecoderBlock2D",) * 3, "layers_per_block": 2, "scaling_factor": 0.13025},
    "no_attention_no_quant": {**BASE, "mid_block_add_attention": False, "use_quant_conv": False,
                              "use_post_quant_conv": False},
}


def save_vae(tmp_path, config, seed=0):
    model = randomize(diffusers.AutoencoderKL(**config).eval(), seed)
    path = tmp_path / "vae"
    model.save_pretrained(path)
    return model, str(path)


def rel_err(got, want):
    return np.abs(got - want).max() / max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vae_matches_diffusers(tmp_path, name):
    model, path = save_vae(tmp_path, CONFIGS[name])
    module, params = pretrained.load_vae(path)
    assert module.config.scaling_factor == CONFIGS[name].get("scaling_factor", 0.18215)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        dist = model.encode(torch.from_numpy(images)).latent_dist
        want_mean, want_logvar = dist.mean.numpy(), dist.logvar.numpy()
        latents = rng.standard_normal(want_mean.shape).astype(np.float32)
        want_images = model.decode(torch.from_numpy(latents)).sample.numpy()
    mean, logvar = module.apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)), method="encode")
    decoded = module.apply({"params": params}, jnp.asarray(latents.transpose(0, 2, 3, 1)), method="decode")
    errs = [rel_err(np.asarray(a).transpose(0, 3, 1, 2), b)
            for a, b in ((mean, want_mean), (logvar, want_logvar), (decoded, want_images))]
    print(f"{name}: encode mean {errs[0]:.2e}, logvar {errs[1]:.2e}, decode {errs[2]:.2e}")
    assert max(errs) <= 1e-4


def test_legacy_attention_names_load(tmp_path):
    """SD 1.x VAEs on disk often use `query/key/value/proj_attn` with 1x1-conv weights."""
    from safetensors.numpy import load_file, save_file

    model, path = save_vae(tmp_path, BASE)
    file = f"{path}/diffusion_pytorch_model.safetensors"
    state = load_file(file)
    legacy = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f"attentions.0.{new}." in key:
                key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
                if value.ndim == 2:
                    value = value[:, :, None, None]
        legacy[key] = value
    assert any(".query." in k for k in legacy)
    save_file(legacy, file)
    module, params = pretrained.load_vae(path)
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model.decode(torch.from_numpy(latents)).sample.numpy()
    got = module.apply({"params": params}, jnp.asarray(latents.transpose(0, 2, 3, 1)), method="decode")
    assert rel_err(np.asarray(got).transpose(0, 3, 1, 2), want) <= 1e-4


def test_strict_loading_names_every_offending_key(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = save_vae(tmp_path, BASE)
    file = f"{path}/diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["decoder.conv_out.weight"]
    state["encoder.conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    state["spurious"] = np.zeros(1, np.float32)
    save_file(state, file)
    with pytest.raises(weights.WeightMappingError) as info:
        pretrained.load_vae(path)
    assert info.value.missing == ["decoder.conv_out.weight"]
    assert info.value.unexpected == ["spurious"]
    assert [m[0] for m in info.value.misshaped] == ["encoder.conv_in.weight"]


def test_unsupported_vae_config_raises():
    with pytest.raises(NotImplementedError, match="latents_mean"):
        VAEConfig.from_diffusers({**BASE, "latents_mean": [0.0] * 4})
    with pytest.raises(NotImplementedError, match="act_fn"):
        VAEConfig.from_diffusers({**BASE, "act_fn": "gelu"})
