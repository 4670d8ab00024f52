"""Load Stable Diffusion from diffusers-format directories into Flax modules and params.

    unet, unet_params = load_unet("sd15/unet")
    out = unet.apply({"params": unet_params}, latents_nhwc, timesteps, text_embeddings)

Every loader reads `config.json`, builds the Flax module, converts the weights
strictly against `jax.eval_shape` of its init (any missing, unexpected or
misshaped key raises one error naming them all) and returns `(module, params)`.
safetensors are read without torch. Nothing is downloaded: paths are local.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from artv_jax import weights
from artv_jax.models.clip_text import CLIPTextConfig, CLIPTextModel
from artv_jax.models.unet import UNet2DConditionModel, UNetConfig
from artv_jax.models.vae import AutoencoderKL, VAEConfig

__all__ = [
    "StableDiffusion",
    "load_stable_diffusion",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
]

# Old diffusers checkpoints (most SD 1.x VAEs on disk) name the VAE's attention
# `query/key/value/proj_attn` with 1x1-conv-shaped weights; diffusers renames
# them on load and so do we.
_LEGACY_VAE_ATTENTION = [
    (r"\.attentions\.(\d+)\.query\.", r".attentions.\1.to_q."),
    (r"\.attentions\.(\d+)\.key\.", r".attentions.\1.to_k."),
    (r"\.attentions\.(\d+)\.value\.", r".attentions.\1.to_v."),
    (r"\.attentions\.(\d+)\.proj_attn\.", r".attentions.\1.to_out.0."),
]


def _init_shapes(module, *args) -> Any:
    return jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a), *args)["params"]


def _to_device(params: dict, dtype) -> dict:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


def load_unet(path: str, dtype=jnp.float32) -> tuple[UNet2DConditionModel, dict]:
    """Loads a diffusers `UNet2DConditionModel` directory; params and compute in `dtype`."""
    config = UNetConfig.from_diffusers(weights.read_config(path))
    module = UNet2DConditionModel(config, dtype=dtype)
    target = _init_shapes(module, *unet_example_inputs(config))
    params = weights.convert_state_dict(weights.read_state_dict(path), target, component="unet", dtype=np.float32)
    return module, _to_device(params, dtype)


def unet_example_inputs(config: UNetConfig, batch: int = 1, size: int | None = None) -> tuple:
    """Small abstract inputs for `init`/`eval_shape` of a UNet (shapes only matter)."""
    size = size or 2 ** (len(config.block_out_channels) - 1)
    return (
        jax.ShapeDtypeStruct((batch, size, size, config.in_channels), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((batch, 1, config.cross_attention_dim[0]), jnp.float32),
    )


def load_vae(path: str, dtype=jnp.float32) -> tuple[AutoencoderKL, dict]:
    """Loads a diffusers `AutoencoderKL` directory; `scaling_factor` is on `module.config`."""
    config = VAEConfig.from_diffusers(weights.read_config(path))
    module = AutoencoderKL(config, dtype=dtype)
    image = jax.ShapeDtypeStruct((1, 8, 8, config.in_channels), jnp.float32)
    target = _init_shapes(module, image)
    state = weights.rename_keys(weights.read_state_dict(path), _LEGACY_VAE_ATTENTION)
    params = weights.convert_state_dict(state, target, component="vae", dtype=np.float32)
    return module, _to_device(params, dtype)


# The text encoder's keys come `text_model.`-prefixed (every transformers 4 save,
# i.e. every published SD checkpoint) or unprefixed (transformers 5's
# `save_pretrained` of a `CLIPTextModel`); both load.
_PREFIX = "text_model."
# Old checkpoints (transformers < 4.31) saved the position-id buffer.
_IGNORE = [r"(text_model\.)?embeddings\.position_ids"]


def load_text_encoder(path: str, dtype: Any = jnp.float32) -> tuple[CLIPTextModel, dict]:
    """Builds the CLIP text encoder of a `text_encoder/` directory and loads its weights.

    Args:
        path: a directory with `config.json` and `*.safetensors` (or `*.bin`).
        dtype: the dtype of the returned parameters and the module's compute dtype.

    Returns:
        (module, params): `module.apply({"params": params}, input_ids)` gives
        transformers' `last_hidden_state`.

    Raises:
        FileNotFoundError: no config.json or no weight file.
        NotImplementedError: the config asks for something the module lacks.
        WeightMappingError: missing, unexpected or misshaped weights, all named.
    """
    config = CLIPTextConfig.from_dict(weights.read_config(path))
    module = CLIPTextModel(config, dtype=dtype, param_dtype=dtype)
    ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]
    state = weights.read_state_dict(path)
    if any(key.startswith(_PREFIX) for key in state):
        # transformers 4 layout: keys match the full tree; stray unprefixed keys are reported as unexpected.
        params = weights.convert_state_dict(state, target, component="text_encoder", ignore=_IGNORE, dtype=dtype)
    else:
        # transformers 5 layout: keys match the tree below `text_model`.
        inner = weights.convert_state_dict(state, target["text_model"], component="text_encoder", ignore=_IGNORE, dtype=dtype)
        params = {"text_model": inner}
    return module, jax.tree.map(jnp.asarray, params)


def load_tokenizer(path: str):
    """Loads the CLIP BPE tokenizer of a `tokenizer/` directory (a `transformers.CLIPTokenizer`).

    Uses `from_pretrained`, which reads vocab.json, merges.txt and the special
    tokens and `model_max_length` from tokenizer_config.json.

    Raises:
        FileNotFoundError: vocab.json or merges.txt is missing.
        ValueError: the tokenizer came out degenerate (<= 2 tokens) or without a
            `model_max_length` (Stable Diffusion pads prompts to it; SD's
            tokenizer_config.json sets 77).
    """
    missing = [f for f in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FileNotFoundError(f"{path!r} is not a CLIP tokenizer directory: {', '.join(missing)} missing.")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    if len(tokenizer) <= 2:
        raise ValueError(f"the tokenizer loaded from {path!r} has only {len(tokenizer)} tokens; "
                         f"vocab.json or merges.txt was not read.")
    if tokenizer.model_max_length > 10**9:
        raise ValueError(f"the tokenizer in {path!r} has no model_max_length: add tokenizer_config.json with "
                         f'"model_max_length" (77 for Stable Diffusion).')
    return tokenizer


@dataclasses.dataclass
class StableDiffusion:
    """The components of a diffusers Stable Diffusion pipeline directory, loaded."""

    unet: UNet2DConditionModel
    unet_params: dict
    vae: AutoencoderKL
    vae_params: dict
    text_encoder: Any
    text_encoder_params: dict
    tokenizer: Any
    scheduler_config: dict


def load_stable_diffusion(root: str, dtype=jnp.float32) -> StableDiffusion:
    """Loads `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` of a pipeline directory."""
    missing = [d for d in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not os.path.isdir(os.path.join(root, d))]
    if missing:
        raise FileNotFoundError(f"{root!r} is not a diffusers Stable Diffusion directory: missing {missing}.")
    scheduler_file = os.path.join(root, "scheduler", "scheduler_config.json")
    if not os.path.isfile(scheduler_file):
        raise FileNotFoundError(f"no scheduler_config.json in {os.path.join(root, 'scheduler')!r}.")
    with open(scheduler_file) as f:
        scheduler_config = json.load(f)
    unet, unet_params = load_unet(os.path.join(root, "unet"), dtype)
    vae, vae_params = load_vae(os.path.join(root, "vae"), dtype)
    text_encoder, text_params = load_text_encoder(os.path.join(root, "text_encoder"), dtype)
    tokenizer = load_tokenizer(os.path.join(root, "tokenizer"))
    return StableDiffusion(unet, unet_params, vae, vae_params, text_encoder, text_params, tokenizer, scheduler_config)
