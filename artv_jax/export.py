r"""Export a training run to a diffusers-format directory, and read one back: `python -m artv_jax.export`.

    python -m artv_jax.export --workdir=workdirs/shapes --out=exported/shapes [--step=N]

writes the run's EMA weights as

    unet/           diffusers UNet2DConditionModel (out_channels = latent channels + 1: the mask)
    adapter/        diffusers T2IAdapter (full_adapter): refs + anchor + noise-level plane -> UNet residuals
    text_encoder/   transformers CLIPTextModel (config.json + model.safetensors)
    tokenizer/      SD runs: the CLIP tokenizer files; scratch runs: word_tokenizer.json (artv_jax.tokenizers)
    vae/            SD runs only: diffusers AutoencoderKL (scratch runs work in pixel space, see artv_config.json)
    scheduler/      diffusers DDIMScheduler scheduler_config.json
    artv_config.json  what a sampler needs beyond the modules: reference frames, noise augmentation at
                      inference, guidance, steps, frame size, autoencoder, mask and anchor settings

Nothing here needs torch: weights go through `artv_jax.weights.to_state_dict`
(Flax -> torch layout, names exactly diffusers'/transformers') into
safetensors written from NumPy, configs are written as JSON. Every parameter is
written, and `import_diffusers(out)` reads the directory back (strictly,
through `artv_jax.pretrained`) into the same modules and bit-identical
parameters. `artv_jax/torch_sampler.py` samples from an exported directory
with PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np

ARTV_CONFIG = "artv_config.json"
WORD_TOKENIZER = "word_tokenizer.json"
FORMAT = "artv_jax/1"
IMAGE_KIND = "image"  # artv_config.json of a text-to-image base (`export_image_model`); ART·V exports have no kind

# Per-block UNet config entries written as one number when all blocks agree (as SD's own configs are).
_UNIFORM_KEYS = ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim", "attention_head_dim")


# ----------------------------------------------------------------------------- configs


def unet_config_dict(unet_config) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config.json of a `UNetConfig`.

    `attention_head_dim` carries the number of heads: diffusers' legacy
    meaning, which its UNet2DConditionModel still uses (it refuses
    `num_attention_heads`); `UNetConfig.from_diffusers` reads it back the same way.
    """
    out = {"_class_name": "UNet2DConditionModel", **unet_config.to_diffusers()}
    for key in _UNIFORM_KEYS:
        if len(set(out[key])) == 1:
            out[key] = out[key][0]
    return out


def text_config_dict(text_config, tokenize) -> dict[str, Any]:
    """The transformers `CLIPTextModel` config.json of our `CLIPTextConfig`."""
    bos, pad = _special_ids(tokenize)
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        **dataclasses.asdict(text_config),
        "bos_token_id": bos, "pad_token_id": pad, "projection_dim": text_config.hidden_size,
        "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
    }


def scheduler_config_dict(schedule) -> dict[str, Any]:
    """The diffusers `DDIMScheduler` scheduler_config.json of a `NoiseSchedule` (every field explicit)."""
    out = {"_class_name": "DDIMScheduler", **dataclasses.asdict(schedule)}
    if out["trained_betas"] is not None:
        out["trained_betas"] = [float(b) for b in out["trained_betas"]]
    out.update(thresholding=False, rescale_betas_zero_snr=False)
    return out


def vae_config_dict(vae_config) -> dict[str, Any]:
    return {"_class_name": "AutoencoderKL", **vae_config.to_diffusers()}


def artv_config_dict(components, config, step: int | None) -> dict[str, Any]:
    """`artv_config.json`: everything a sampler needs that the module configs do not say."""
    from artv_jax.components import PixelSpace

    artv_cfg = components.model.config
    auto = components.autoencoder
    if isinstance(auto, PixelSpace):
        autoencoder = {"kind": "pixels", "patch": auto.patch}
    else:
        vae = auto.vae.config
        autoencoder = {"kind": "vae", "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor}
    autoencoder.update(channels=auto.channels, factor=auto.factor)
    s = config.sample
    sample = {k: s[k] for k in ("num_steps", "eta", "text_guidance", "ref_guidance", "history_level", "ref_level",
                                "chunk_size", "num_frames")}
    return {
        "format": FORMAT,
        "step": step,
        "num_ref_frames": artv_cfg.num_ref_frames,
        "latent_channels": components.model.latent_channels,
        "frame_size": components.frame_size,
        "latent_size": components.latent_size,
        "autoencoder": autoencoder,
        "tokenizer": {"kind": _tokenizer_kind(components.tokenize), "max_length": _max_length(components.tokenize)},
        "sample": sample,
        "mask": {"use_mask": bool(config.model.use_mask), "mask_init_bias": artv_cfg.mask_init_bias},
        "use_anchor": bool(config.model.use_anchor),
        "anchor_attention": artv_cfg.anchor_attention,
        "prediction_type": components.schedule.prediction_type,
        "artv": dataclasses.asdict(artv_cfg),
        "run_config": config.to_dict(),
    }


def _tokenizer_kind(tokenize) -> str:
    from artv_jax.tokenizers import CLIPTokenize, WordTokenizer

    if isinstance(tokenize, WordTokenizer):
        return "word"
    if isinstance(tokenize, CLIPTokenize):
        return "clip"
    raise TypeError(f"cannot export a tokenizer of type {type(tokenize).__name__}.")


def _max_length(tokenize) -> int:
    return int(tokenize.max_length)


def _special_ids(tokenize) -> tuple[int, int]:
    """(bos, pad) token ids: the text encoder's config records them (the forward pass does not use them)."""
    if _tokenizer_kind(tokenize) == "word":
        return 0, 1
    return int(tokenize.tokenizer.bos_token_id), int(tokenize.tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- writing


def export(components, params: dict, config, out: str, step: int | None = None) -> None:
    """Writes `components` with `params` ({"artv", "text"[, "vae"]}) to the diffusers-format directory `out`.

    `config` is the run's config (ConfigDict or dict-like with `model`, `sample`);
    `out` must not exist or be empty.
    """
    from artv_jax import weights
    from artv_jax.components import VAELatents
    from artv_jax.models import adapter as adapter_lib
    from artv_jax.models import artv

    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out!r} exists and is not empty; export into a new directory.")
    needed = ["artv", "text"] + (["vae"] if isinstance(components.autoencoder, VAELatents) else [])
    missing = [k for k in needed if k not in params]
    if missing:
        raise KeyError(f"params lack {missing}; they hold {sorted(params)}.")
    unet_params = params["artv"]["unet"]
    c = components.model.latent_channels
    if unet_params["conv_out"]["bias"].shape != (c + 1,):
        raise ValueError(f"conv_out must have {c} + 1 (mask) outputs, has {unet_params['conv_out']['bias'].shape}.")

    os.makedirs(out, exist_ok=True)
    _write_component(out, "unet", "config.json", unet_config_dict(components.model.unet_config),
                     "diffusion_pytorch_model.safetensors", weights.to_state_dict(unet_params))
    adapter = artv.make_adapter(components.model.unet_config, components.model.config)
    _write_component(out, "adapter", "config.json", adapter_lib.adapter_config_dict(adapter),
                     "diffusion_pytorch_model.safetensors", adapter_lib.adapter_state_dict(params["artv"]["adapter"]))
    _write_component(out, "text_encoder", "config.json",
                     text_config_dict(components.text_encoder.config, components.tokenize),
                     "model.safetensors", weights.to_state_dict(params["text"]))
    if isinstance(components.autoencoder, VAELatents):
        _write_component(out, "vae", "config.json", vae_config_dict(components.autoencoder.vae.config),
                         "diffusion_pytorch_model.safetensors", weights.to_state_dict(params["vae"]))
    _write_json(os.path.join(out, "scheduler", "scheduler_config.json"), scheduler_config_dict(components.schedule))
    _write_tokenizer(os.path.join(out, "tokenizer"), components.tokenize, config)
    _write_json(os.path.join(out, ARTV_CONFIG), artv_config_dict(components, config, step))


def export_run(workdir: str, out: str, step: int | None = None) -> str:
    """Exports the EMA weights of a training run's checkpoint (`step`, default the latest); returns `out`."""
    from artv_jax import checkpoint, runs

    components, params, config = runs.load(workdir, step)
    if step is None:
        step = checkpoint.read_config(workdir)[1]
    export(components, params, config, out, step=step)
    return out


def export_image_model(unet_config, unet_params: dict, text_encoder, text_params: dict, tokenize, schedule,
                       patch: int, frame_size: int, out: str, run_config=None) -> None:
    """Writes a pixel-space text-to-image model (`image_base.train`'s stage 1) as a diffusers-format directory.

    The layout of `export` without `adapter/` (an image UNet: out_channels = in_channels) and, as for
    every scratch model, without `vae/`: `artv_config.json` ("kind": "image") names the pixel patch.
    `components.load_base` reads it back, so ART·V starts from it as from Stable Diffusion.
    """
    from artv_jax import weights

    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out!r} exists and is not empty; export into a new directory.")
    if unet_config.out_channels != unet_config.in_channels:
        raise ValueError(f"an image UNet predicts its input channels; got in {unet_config.in_channels}, "
                         f"out {unet_config.out_channels}.")
    os.makedirs(out, exist_ok=True)
    _write_component(out, "unet", "config.json", unet_config_dict(unet_config),
                     "diffusion_pytorch_model.safetensors", weights.to_state_dict(unet_params))
    _write_component(out, "text_encoder", "config.json", text_config_dict(text_encoder.config, tokenize),
                     "model.safetensors", weights.to_state_dict(text_params))
    _write_json(os.path.join(out, "scheduler", "scheduler_config.json"), scheduler_config_dict(schedule))
    _write_tokenizer(os.path.join(out, "tokenizer"), tokenize, None)
    channels = 3 * patch * patch
    _write_json(os.path.join(out, ARTV_CONFIG), {
        "format": FORMAT, "kind": IMAGE_KIND, "frame_size": frame_size, "latent_size": frame_size // patch,
        "autoencoder": {"kind": "pixels", "patch": patch, "channels": channels, "factor": patch},
        "tokenizer": {"kind": _tokenizer_kind(tokenize), "max_length": _max_length(tokenize)},
        "prediction_type": schedule.prediction_type,
        "run_config": run_config.to_dict() if run_config is not None else None,
    })


def _write_component(out, name, config_name, config, weights_name, state) -> None:
    from safetensors.numpy import save_file

    directory = os.path.join(out, name)
    _write_json(os.path.join(directory, config_name), config)
    save_file({k: _float32(v) for k, v in state.items()}, os.path.join(directory, weights_name),
              metadata={"format": "pt"})


def _float32(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32 and (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        x = x.astype(np.float32)  # exact: every fp16/bf16 value is a float32 value
    return np.ascontiguousarray(x)


def _write_tokenizer(directory: str, tokenize, config) -> None:
    from artv_jax.tokenizers import SPECIAL

    os.makedirs(directory, exist_ok=True)
    if _tokenizer_kind(tokenize) == "word":
        _write_json(os.path.join(directory, WORD_TOKENIZER), {
            "class": "WordTokenizer", "special_tokens": list(SPECIAL), "vocabulary": list(tokenize.vocabulary),
            "max_length": tokenize.max_length})
        return
    source = os.path.join(config.model.pretrained, "tokenizer")
    if os.path.isdir(source):
        shutil.copytree(source, directory, dirs_exist_ok=True)
    else:  # the pretrained directory is gone: write the loaded tokenizer's files
        tokenize.tokenizer.save_pretrained(directory)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------- reading back


def read_artv_config(path: str) -> dict:
    file = os.path.join(path, ARTV_CONFIG)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r} is not an exported ART·V directory: no {ARTV_CONFIG}.")
    with open(file) as f:
        cfg = json.load(f)
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{file}: format {cfg.get('format')!r}, expected {FORMAT!r}.")
    return cfg


def import_diffusers(path: str, dtype=None):
    """An exported directory -> (components, params): the inverse of `export`, bit for bit.

    Every component is read strictly (`artv_jax.pretrained` / `load_adapter`:
    any missing, unexpected or misshaped weight raises, naming it), and the
    adapter's config must be the one ART·V builds for this UNet.
    """
    import jax.numpy as jnp

    from artv_jax import pretrained, weights
    from artv_jax.components import Components, PixelSpace, VAELatents
    from artv_jax.models import adapter as adapter_lib
    from artv_jax.models import artv
    from artv_jax.models.unet import UNetConfig

    dtype = dtype or jnp.float32
    cfg = read_artv_config(path)
    if cfg.get("kind") == IMAGE_KIND:
        raise ValueError(f"{path!r} is a text-to-image base (artv_config.json kind {IMAGE_KIND!r}), not an ART·V "
                         f"model: train ART·V from it with --config.model.pretrained={path}.")
    model = artv.ArtV(UNetConfig.from_diffusers(weights.read_config(os.path.join(path, "unet"))),
                      artv.ArtVConfig(**cfg["artv"]), dtype)
    _, unet_params = pretrained.load_unet(os.path.join(path, "unet"), dtype)
    adapter, adapter_params = adapter_lib.load_adapter(os.path.join(path, "adapter"), dtype)
    expected = artv.make_adapter(model.unet_config, model.config, dtype)
    if adapter_lib.adapter_config_dict(adapter) != adapter_lib.adapter_config_dict(expected):
        raise ValueError(f"adapter config {adapter_lib.adapter_config_dict(adapter)} does not fit the UNet and "
                         f"artv config, which need {adapter_lib.adapter_config_dict(expected)}.")
    text_encoder, text_params = pretrained.load_text_encoder(os.path.join(path, "text_encoder"), dtype)
    params = {"artv": {"unet": unet_params, "adapter": adapter_params}, "text": text_params}

    auto = cfg["autoencoder"]
    if auto["kind"] == "pixels":
        autoencoder = PixelSpace(auto["patch"])
    elif auto["kind"] == "vae":
        vae, params["vae"] = pretrained.load_vae(os.path.join(path, "vae"), dtype)
        autoencoder = VAELatents(vae)
    else:
        raise ValueError(f"{ARTV_CONFIG}: unknown autoencoder kind {auto['kind']!r}.")

    tokenize = read_tokenizer(path, cfg)
    schedule = read_schedule(path)
    components = Components(model=model, schedule=schedule, text_encoder=text_encoder, tokenize=tokenize,
                            autoencoder=autoencoder, frame_size=cfg["frame_size"])
    if components.latent_size != cfg["latent_size"] or autoencoder.channels != model.latent_channels:
        raise ValueError(f"{ARTV_CONFIG}: frame size {cfg['frame_size']} and autoencoder {auto} do not fit "
                         f"the UNet's {model.latent_channels} latent channels / latent size {cfg['latent_size']}.")
    return components, params


def read_tokenizer(path: str, cfg: dict):
    """The tokenizer of an exported directory: a `WordTokenizer` or a `CLIPTokenize`, as `cfg` says."""
    from artv_jax import pretrained
    from artv_jax.tokenizers import SPECIAL, CLIPTokenize, WordTokenizer

    tok_dir = os.path.join(path, "tokenizer")
    if cfg["tokenizer"]["kind"] == "word":
        with open(os.path.join(tok_dir, WORD_TOKENIZER)) as f:
            word = json.load(f)
        if tuple(word["special_tokens"]) != SPECIAL:
            raise ValueError(f"{WORD_TOKENIZER}: special tokens {word['special_tokens']}, expected {list(SPECIAL)}.")
        return WordTokenizer(tuple(word["vocabulary"]), max_length=word["max_length"])
    tokenizer = pretrained.load_tokenizer(tok_dir)
    return CLIPTokenize(tokenizer, tokenizer.model_max_length)


def read_schedule(path: str):
    from artv_jax.diffusion.schedule import NoiseSchedule

    with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
        return NoiseSchedule.from_config(json.load(f))


def is_image_model(path: str) -> bool:
    """Whether `path` holds a pixel-space text-to-image base written by `export_image_model`."""
    file = os.path.join(path, ARTV_CONFIG)
    return os.path.isfile(file) and read_artv_config(path).get("kind") == IMAGE_KIND


def import_image_model(path: str, dtype=None):
    """The inverse of `export_image_model`: (unet, unet_params, text_encoder, text_params, tokenize, schedule,
    patch), read strictly (`artv_jax.pretrained`: every weight named, shaped and used)."""
    import jax.numpy as jnp

    from artv_jax import pretrained

    dtype = dtype or jnp.float32
    cfg = read_artv_config(path)
    if cfg.get("kind") != IMAGE_KIND or cfg["autoencoder"]["kind"] != "pixels":
        raise ValueError(f"{path!r} is not a pixel-space text-to-image base ({ARTV_CONFIG}: kind "
                         f"{cfg.get('kind')!r}, autoencoder {cfg['autoencoder']['kind']!r}).")
    unet, unet_params = pretrained.load_unet(os.path.join(path, "unet"), dtype)
    text_encoder, text_params = pretrained.load_text_encoder(os.path.join(path, "text_encoder"), dtype)
    patch = cfg["autoencoder"]["patch"]
    if unet.config.in_channels != 3 * patch * patch:
        raise ValueError(f"{path!r}: the UNet takes {unet.config.in_channels} channels, the pixel patch {patch} "
                         f"gives {3 * patch * patch}.")
    return unet, unet_params, text_encoder, text_params, read_tokenizer(path, cfg), read_schedule(path), patch


# ----------------------------------------------------------------------------- command line


def main(argv):
    del argv
    from absl import flags

    from artv_jax import runs

    FLAGS = flags.FLAGS
    with runs.usage_errors("artv_jax.export", FileExistsError):
        if not FLAGS.workdir or not FLAGS.out:
            raise runs.UsageError("give --workdir (a training run) and --out (a new directory).")
        out = export_run(FLAGS.workdir, FLAGS.out, FLAGS.step)
    print(f"wrote {out} ({', '.join(sorted(os.listdir(out)))})")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", "", "A training run's workdir.")
    flags.DEFINE_string("out", "", "The directory to write (must not exist or be empty).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


if __name__ == "__main__":
    from artv_jax import runs

    runs.run("artv_jax.export", main, _define_flags)
