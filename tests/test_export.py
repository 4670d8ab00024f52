"""Export to diffusers format: bit-exact reverse import, strict loading in diffusers/transformers, and the
PyTorch sampler (`artv_jax.torch_sampler`) against ours on the same inputs and the same noise.

The scratch model is the tiny shapes-world run of `tests/conftest.py::tiny_run`
(2 training steps), exported with the command line; the SD model is a tiny
random SD directory (`helpers.write_tiny_sd`) turned into ART·V and exported
without training (its adapter and mask head are randomised so they matter).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from helpers import REPO, write_tiny_sd
from test_train import _env

from artv_jax import export, generate, runs
from artv_jax.diffusion import sampling
from artv_jax.pixels import to_model_range

SHAPES_PROMPTS = ("a red square moving right on a black background", "a blue circle moving up on a white background",
                  "a yellow triangle moving left on a gray background")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny shapes run exported with `python -m artv_jax.export`."""
    out = tmp_path_factory.mktemp("export") / "shapes"
    cmd = [sys.executable, "-m", "artv_jax.export", f"--workdir={tiny_run}", f"--out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout
    return out


@pytest.fixture(scope="module")
def sd_exported(tmp_path_factory):
    """(components, params, config, out): ART·V on a tiny random SD, randomised adapter and mask, exported."""
    from artv_jax import components as components_lib
    from configs import webvid as webvid_config

    root = tmp_path_factory.mktemp("sd")
    write_tiny_sd(root / "sd")
    config = webvid_config.get_config("256")
    config.model.pretrained = str(root / "sd")
    config.data.size = 16
    config.train.remat = False
    comps, params = components_lib.build(config)
    rng = np.random.default_rng(0)
    adapter = jax.tree.map(lambda x: np.float32(0.2) * rng.standard_normal(x.shape, np.float32),
                           params["artv"]["adapter"])
    conv_out = dict(params["artv"]["unet"]["conv_out"])
    kernel = np.array(conv_out["kernel"])
    kernel[..., -1] = 0.5 * rng.standard_normal(kernel.shape[:-1])
    conv_out = {"kernel": kernel, "bias": np.array(conv_out["bias"]).copy()}
    conv_out["bias"][-1] = 0.0  # m = sigmoid(logits) varies around 0.5: the blend matters
    params = {**params, "artv": {"unet": {**params["artv"]["unet"], "conv_out": conv_out}, "adapter": adapter}}
    out = root / "exported"
    export.export(comps, params, config, str(out), step=0)
    return comps, params, config, out


def _flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def assert_bit_exact(got, want):
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype == np.float32, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def assert_same_components(got, want):
    assert got.model.unet_config == want.model.unet_config
    assert got.model.config == want.model.config
    assert got.schedule == want.schedule
    assert got.text_encoder.config == want.text_encoder.config
    assert got.frame_size == want.frame_size and got.latent_size == want.latent_size
    if hasattr(want.autoencoder, "vae"):
        assert got.autoencoder.vae.config == want.autoencoder.vae.config
    else:
        assert got.autoencoder == want.autoencoder
    for prompt in ("", SHAPES_PROMPTS[0]):
        np.testing.assert_array_equal(got.tokenize(prompt), want.tokenize(prompt))


# ---------------------------------------------------------------------------- (a) round trip


def test_reverse_import_is_bit_exact(tiny_run, exported):
    comps, params, config = runs.load(str(tiny_run))
    got_comps, got_params = export.import_diffusers(str(exported))
    assert_bit_exact(got_params, params)
    assert_same_components(got_comps, comps)
    assert got_comps.tokenize == comps.tokenize  # the word tokenizer is rebuilt from its vocabulary

    cfg = json.loads((exported / "artv_config.json").read_text())
    assert cfg["step"] == 2 and cfg["num_ref_frames"] == config.model.artv.num_ref_frames
    assert cfg["sample"]["ref_level"] == config.sample.ref_level
    assert cfg["sample"]["text_guidance"] == config.sample.text_guidance
    assert cfg["autoencoder"] == {"kind": "pixels", "patch": 2, "channels": 12, "factor": 2}
    assert cfg["mask"] == {"use_mask": True, "mask_init_bias": config.model.artv.mask_init_bias}
    assert cfg["anchor_attention"] is False and cfg["frame_size"] == 32
    assert not (exported / "vae").exists()
    with pytest.raises(FileExistsError):
        export.export(comps, params, config, str(exported))


def test_command_line_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-m", "artv_jax.export", "--workdir=/nonexistent", f"--out={tmp_path / 'x'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("artv_jax.export: error:")]
    assert len(errors) == 1 and "no checkpoints in" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_sd_reverse_import_is_bit_exact(sd_exported):
    comps, params, _, out = sd_exported
    got_comps, got_params = export.import_diffusers(str(out))
    assert_bit_exact(got_params, params)
    assert_same_components(got_comps, comps)
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


# ---------------------------------------------------------------------------- (b) strict loading


def _safetensors_keys(path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _assert_loaded_strictly(name, model, info, file_state, prefix=""):
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    assert not problems and not info.get("error_msgs"), f"{name}: {problems} {info.get('error_msgs')}"
    state = {prefix + k: v for k, v in model.state_dict().items() if "position_ids" not in k}
    assert sorted(state) == sorted(file_state), f"{name}: the file does not hold exactly the model's parameters"
    for key, value in file_state.items():  # and they are the ones that were loaded
        np.testing.assert_array_equal(state[key].numpy(), value, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("which", ["shapes", "sd"])
def test_exported_modules_load_strictly(which, request):
    out = request.getfixturevalue("exported") if which == "shapes" else request.getfixturevalue("sd_exported")[3]
    unet, info = diffusers.UNet2DConditionModel.from_pretrained(out / "unet", output_loading_info=True)
    _assert_loaded_strictly("unet", unet, info, _safetensors_keys(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet.config.out_channels == unet.config.in_channels + 1
    adapter, info = diffusers.T2IAdapter.from_pretrained(out / "adapter", output_loading_info=True)
    _assert_loaded_strictly("adapter", adapter, info,
                            _safetensors_keys(out / "adapter" / "diffusion_pytorch_model.safetensors"))
    text, info = transformers.CLIPTextModel.from_pretrained(out / "text_encoder", output_loading_info=True)
    file_state = _safetensors_keys(out / "text_encoder" / "model.safetensors")
    prefix = "" if any(k.startswith("text_model.") for k in text.state_dict()) else "text_model."
    _assert_loaded_strictly("text_encoder", text, info, file_state, prefix)
    if which == "sd":
        vae, info = diffusers.AutoencoderKL.from_pretrained(out / "vae", output_loading_info=True)
        _assert_loaded_strictly("vae", vae, info, _safetensors_keys(out / "vae" / "diffusion_pytorch_model.safetensors"))
    scheduler = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert all(scheduler.config[k] == v for k, v in saved.items() if not k.startswith("_")), scheduler.config


def test_torch_sampler_refuses_anchor_attention(exported, tmp_path):
    from artv_jax.torch_sampler import TorchSampler

    copy = tmp_path / "anchor"
    shutil.copytree(exported, copy)
    cfg = json.loads((copy / "artv_config.json").read_text())
    cfg["anchor_attention"] = True
    (copy / "artv_config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="anchor attention"):
        TorchSampler.from_pretrained(str(copy))


# ---------------------------------------------------------------------------- (c) the two samplers


CASES = {
    # text-to-video with a per-frame prompt schedule: frame 0 with references dropped, DDIM eta 0.
    "text_to_video": dict(num_steps=3, eta=0.0, text_guidance=2.0, ref_guidance=1.0, ref_level=0.02),
    # image-to-video with reference guidance (a third branch) and stochastic DDIM (the per-step noise).
    "image_to_video": dict(num_steps=2, eta=0.5, text_guidance=3.0, ref_guidance=1.5, ref_level=0.05),
}


def compare_samplers(comps, params, out, mode, prompts, num_frames=3, batch=2, seed=0) -> dict:
    """Runs both samplers on the same prompts, frames and noise; returns the max abs differences."""
    from artv_jax.torch_sampler import TorchSampler, jax_noise

    settings = CASES[mode]
    sampler = sampling.Sampler(comps.model, comps.schedule, sampling.SamplerConfig(chunk_size=2, **settings))
    tsampler = TorchSampler.from_pretrained(str(out))
    key = jax.random.PRNGKey(seed)
    schedule = [[prompts[min(i, len(prompts) - 1)]] * batch for i in range(num_frames)]
    size, c = comps.latent_size, comps.autoencoder.channels
    first = None
    if mode == "image_to_video":
        first = np.random.default_rng(seed).integers(0, 256, (batch, 1, comps.frame_size, comps.frame_size, 3),
                                                     dtype=np.uint8)

    # Text embeddings, each sampler with its own text encoder.
    unique = sorted({p for frame in schedule for p in frame} | {""})
    emb_j = np.asarray(generate.embed(comps, params, unique))
    emb_t = tsampler.encode_prompts(unique).numpy()
    table = dict(zip(unique, emb_j))
    texts_j = np.stack([np.stack([table[p] for p in frame]) for frame in schedule])
    uncond_j = np.broadcast_to(table[""], (batch, *texts_j.shape[2:]))
    table_t = dict(zip(unique, torch.from_numpy(emb_t)))
    texts_t = torch.stack([torch.stack([table_t[p] for p in frame]) for frame in schedule])
    uncond_t = table_t[""].expand(batch, -1, -1)

    first_j = first_t = None
    if first is not None:
        first_j = np.stack([np.asarray(comps.autoencoder.encode(params.get("vae"), to_model_range(first[:, i])))
                            for i in range(first.shape[1])])
        first_t = torch.stack([tsampler.encode_frames(first[:, i]) for i in range(first.shape[1])])

    latents_j = sampling.sample_video(sampler, params["artv"], key, texts_j, uncond_j, first_frames=first_j,
                                      latent_shape=(batch, size, size, c), progress=False)
    noise = jax_noise(key, (batch, c, size, size), comps.model.config.num_ref_frames, settings["num_steps"])
    latents_t = tsampler.sample_latents(texts_t, uncond_t, first_frames=first_t, latent_shape=(batch, c, size, size),
                                        noise=noise, **settings).numpy().transpose(0, 1, 3, 4, 2)
    pixels_j = np.stack([np.asarray(comps.autoencoder.decode(params.get("vae"), z)) for z in latents_j])
    pixels_t = np.stack([tsampler.decode(torch.from_numpy(z.transpose(0, 3, 1, 2).copy())).numpy() for z in latents_t])

    # The whole path, prompts to uint8 videos, once more on each side.
    video_j = generate.generate(comps, params, sampler, schedule, num_frames, key, first_frames=first)
    video_t = tsampler.generate(schedule, num_frames, first_frames=first, noise=noise, **settings)

    diffs = {
        "text_embeddings": float(np.abs(emb_j - emb_t).max()),
        "first_frames": 0.0 if first is None else float(np.abs(first_j - first_t.numpy().transpose(0, 1, 3, 4, 2)).max()),
        "latents": float(np.abs(latents_j - latents_t).max()),
        "latents_scale": float(np.abs(latents_j).max()),
        "frames": float(np.abs(pixels_j - pixels_t.transpose(0, 1, 3, 4, 2)).max()),
        "uint8_frames": int(np.abs(video_j.astype(int) - video_t.astype(int)).max()),
    }
    print(f"{mode}: max |ours - torch|: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in diffs.items()))
    assert latents_j.shape == latents_t.shape == (num_frames, batch, size, size, c)
    return diffs


@pytest.mark.parametrize("mode", list(CASES))
def test_torch_sampler_matches_ours(exported, mode):
    comps, params = export.import_diffusers(str(exported))
    diffs = compare_samplers(comps, params, exported, mode, SHAPES_PROMPTS[:2])
    assert diffs["text_embeddings"] < 1e-5
    assert diffs["latents"] < 1e-4 * max(1.0, diffs["latents_scale"])
    assert diffs["frames"] < 1e-4 * max(1.0, diffs["latents_scale"])
    assert diffs["uint8_frames"] <= 1


def test_torch_sampler_matches_ours_with_x0_prediction(exported, tmp_path):
    """The same weights read as an x0-predicting model ("sample"): both samplers convert it alike."""
    copy = tmp_path / "x0"
    shutil.copytree(exported, copy)
    for name in ("scheduler/scheduler_config.json", "artv_config.json"):
        cfg = json.loads((copy / name).read_text())
        cfg["prediction_type"] = "sample"
        (copy / name).write_text(json.dumps(cfg))
    comps, params = export.import_diffusers(str(copy))
    assert comps.schedule.prediction_type == "sample"
    diffs = compare_samplers(comps, params, copy, "image_to_video", SHAPES_PROMPTS[:2])
    assert diffs["latents"] < 1e-4 * max(1.0, diffs["latents_scale"])
    assert diffs["uint8_frames"] <= 1


@pytest.mark.parametrize("mode", list(CASES))
def test_torch_sampler_matches_ours_on_sd(sd_exported, mode):
    comps, params, _, out = sd_exported
    diffs = compare_samplers(comps, params, out, mode, ("a clip of a dog", "a cat"))
    assert diffs["text_embeddings"] < 1e-5
    assert diffs["first_frames"] < 1e-4
    assert diffs["latents"] < 1e-4 * max(1.0, diffs["latents_scale"])
    assert diffs["frames"] < 1e-3
    assert diffs["uint8_frames"] <= 1
