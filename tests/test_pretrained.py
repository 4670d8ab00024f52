"""`load_stable_diffusion` on a whole tiny diffusers pipeline directory, end to end against PyTorch."""


import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from artv_jax import pretrained
from helpers import write_tiny_sd


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    modules = write_tiny_sd(root)
    unet, vae, text = modules["unet"], modules["vae"], modules["text_encoder"]
    return root, unet, vae, text


def test_load_stable_diffusion_end_to_end(pipeline_dir):
    """prompt -> tokens -> text encoder -> UNet -> VAE decode, ours against the PyTorch chain."""
    root, unet, vae, text = pipeline_dir
    sd = pretrained.load_stable_diffusion(str(root))
    assert sd.scheduler_config["beta_schedule"] == "scaled_linear"
    ids = sd.tokenizer(["a red square moving left"], padding="max_length", max_length=77,
                       return_tensors="np").input_ids
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        emb = text(torch.from_numpy(ids)).last_hidden_state
        eps = unet(torch.from_numpy(latents), torch.tensor([400]), emb).sample
        want = vae.decode(eps / vae.config.scaling_factor).sample.numpy()
    emb_j = sd.text_encoder.apply({"params": sd.text_encoder_params}, jnp.asarray(ids))
    eps_j = sd.unet.apply({"params": sd.unet_params}, jnp.asarray(latents.transpose(0, 2, 3, 1)), jnp.array([400]), emb_j)
    got = sd.vae.apply({"params": sd.vae_params}, eps_j / sd.vae.config.scaling_factor, method="decode")
    err = np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want).max() / max(1.0, np.abs(want).max())
    print(f"pipeline chain max |diff| / scale = {err:.2e}")
    assert err <= 1e-4


def test_missing_component_is_named(pipeline_dir, tmp_path):
    root = tmp_path / "partial"
    root.mkdir()
    for name in ("unet", "vae"):
        (root / name).symlink_to(pipeline_dir[0] / name)
    with pytest.raises(FileNotFoundError, match=r"\['text_encoder', 'tokenizer', 'scheduler'\]"):
        pretrained.load_stable_diffusion(str(root))


def test_component_dir_without_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pretrained.load_unet(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors or \\*.bin"):
        pretrained.load_unet(str(tmp_path))
