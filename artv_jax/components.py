"""Build every component a config names: the ART·V model, text encoder, tokenizer, autoencoder, schedule.

Two sources, one interface:

- `config.model.pretrained` set: a diffusers Stable Diffusion directory; the
  UNet becomes ART·V (zero adapter, mask channel), and the VAE, CLIP text
  encoder, tokenizer and noise schedule come from the same directory.
- otherwise: a model trained from scratch as `config.model` describes it
  (the shapes default: a tiny ART·V in pixel space with a word-level tokenizer
  and a tiny CLIP-style text encoder).

Parameters are one tree `{"artv": ..., "text": ..., "vae": ...}` ("vae" only
in latent space). `Components.init(key)` is a pure function for scratch
models, so the trainer can jit it with sharded outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from artv_jax.diffusion.schedule import NoiseSchedule
from artv_jax.models import artv
from artv_jax.models.clip_text import CLIPTextConfig, CLIPTextModel
from artv_jax.models.layers import pixel_shuffle, pixel_unshuffle
from artv_jax.models.unet import UNetConfig
from artv_jax.models.vae import AutoencoderKL
from artv_jax.tokenizers import WordTokenizer


@dataclasses.dataclass(frozen=True)
class PixelSpace:
    """An exact (invertible) autoencoder: frames in [-1, 1] folded into `patch` x `patch` pixel patches.

    With patch 2 a 32x32x3 frame is a 16x16x12 latent: the UNet and the
    adapter work at half resolution (4x cheaper attention) and lose nothing.
    """

    patch: int = 1

    @property
    def channels(self) -> int:
        return 3 * self.patch * self.patch

    @property
    def factor(self) -> int:
        return self.patch

    def encode(self, params, frames):
        return pixel_unshuffle(frames, self.patch)

    def decode(self, params, latents):
        return pixel_shuffle(latents, self.patch)


@dataclasses.dataclass(frozen=True)
class VAELatents:
    """SD's VAE: frames [-1, 1] <-> latents scaled by `scaling_factor` (posterior mean; no sampling)."""

    vae: AutoencoderKL

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _scale_shift(self):
        return self.vae.config.scaling_factor, self.vae.config.shift_factor or 0.0

    def encode(self, params, frames):
        mean, _ = self.vae.apply({"params": params}, frames, method="encode")
        scale, shift = self._scale_shift()
        return (mean - shift) * scale

    def decode(self, params, latents):
        scale, shift = self._scale_shift()
        return self.vae.apply({"params": params}, latents / scale + shift, method="decode")


@dataclasses.dataclass(frozen=True, eq=False)
class Components:
    """What the trainer, sampler, evaluator and exporter need, minus the parameters."""

    model: artv.ArtV
    schedule: NoiseSchedule
    text_encoder: CLIPTextModel
    tokenize: Callable[[str], Any]
    autoencoder: PixelSpace | VAELatents
    frame_size: int

    @property
    def latent_size(self) -> int:
        return self.frame_size // self.autoencoder.factor

    def encode_text(self, params, tokens):
        """(B, L) ids -> (B, L, D) embeddings with the text encoder's params from the full tree."""
        return self.text_encoder.apply({"params": params["text"]}, tokens)

    def init(self, key) -> dict:
        """Random parameters for a scratch model (jittable)."""
        k1, k2 = jax.random.split(key)
        size = self.latent_size
        text = self.text_encoder.init(k2, jnp.zeros((1, self.text_encoder.config.max_position_embeddings), jnp.int32))
        return {"artv": artv.init_params(self.model, k1, size, size, text_len=4), "text": text["params"]}


def schedule_from_config(config) -> NoiseSchedule:
    return NoiseSchedule.from_config(dict(config))


def build(config, dtype=jnp.float32) -> tuple[Components, dict | None]:
    """The components of a validated config (`artv_jax.config.validate`), and the loaded parameters (None for
    scratch models: use `init`)."""
    model_cfg = config.model
    artv_cfg = artv.ArtVConfig(**dict(model_cfg.artv))
    if model_cfg.pretrained:
        base = load_base(model_cfg.pretrained, dtype)
        model, artv_params = artv.build_from_unet(base.unet, base.unet_params, artv_cfg,
                                                  jax.random.PRNGKey(config.seed), dtype=dtype)
        components = Components(
            model=model.clone(remat=config.train.remat), schedule=base.schedule, text_encoder=base.text_encoder,
            tokenize=base.tokenize, autoencoder=base.autoencoder, frame_size=config.data.size)
        return components, {"artv": artv_params, **base.params}

    if model_cfg.autoencoder != "pixels":
        raise ValueError(f"scratch models run in pixel space; model.autoencoder={model_cfg.autoencoder!r}.")
    autoencoder = PixelSpace(model_cfg.patch)
    tokenize, text_encoder = scratch_text_encoder(config, dtype)
    unet_config = scratch_unet_config(config, autoencoder.channels, autoencoder.channels + 1)
    components = Components(
        model=artv.ArtV(unet_config, artv_cfg, dtype, remat=config.train.remat),
        schedule=schedule_from_config(config.schedule),
        text_encoder=text_encoder,
        tokenize=tokenize,
        autoencoder=autoencoder,
        frame_size=config.data.size,
    )
    return components, None


def scratch_text_encoder(config, dtype=jnp.float32) -> tuple[WordTokenizer, CLIPTextModel]:
    """A scratch model's word-level tokenizer and CLIP-style text encoder, as `config.model.text` describes."""
    text = config.model.text
    tokenize = WordTokenizer(tuple(text.vocabulary), max_length=text.max_length)
    text_config = CLIPTextConfig(
        vocab_size=tokenize.vocab_size, hidden_size=text.hidden_size, intermediate_size=4 * text.hidden_size,
        num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
        max_position_embeddings=text.max_length, hidden_act="quick_gelu", eos_token_id=tokenize.eos_token_id)
    return tokenize, CLIPTextModel(text_config, dtype=dtype)


def scratch_unet_config(config, in_channels: int, out_channels: int) -> UNetConfig:
    """A scratch model's UNet as `config.model.unet` describes it (ART·V: out_channels = in_channels + 1)."""
    unet, hidden = config.model.unet, config.model.text.hidden_size
    n = len(unet.block_out_channels)
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, block_out_channels=tuple(unet.block_out_channels),
        down_block_types=tuple(unet.down_block_types), up_block_types=tuple(unet.up_block_types),
        layers_per_block=(unet.layers_per_block,) * n, transformer_layers_per_block=(1,) * n,
        num_attention_heads=(unet.num_heads,) * n, cross_attention_dim=(hidden,) * n,
        norm_num_groups=unet.norm_num_groups, addition_embed_type=unet.addition_embed_type or None,
        addition_embed_type_num_heads=unet.addition_embed_type_num_heads,
        resnet_time_scale_shift=unet.resnet_time_scale_shift)


@dataclasses.dataclass
class ImageBase:
    """A pretrained text-to-image model that ART·V starts from: its UNet and everything around it."""

    unet: Any
    unet_params: dict
    schedule: NoiseSchedule
    text_encoder: CLIPTextModel
    tokenize: Callable[[str], Any]
    autoencoder: PixelSpace | VAELatents
    params: dict  # {"text": ..., and "vae": ... in latent space}


def load_base(path: str, dtype=jnp.float32) -> ImageBase:
    """A diffusers-format text-to-image directory: Stable Diffusion (unet, vae, text_encoder, tokenizer,
    scheduler), or a pixel-space image model as `image_base.train` and `export.export_image_model` write it
    (no vae: `artv_config.json` names the pixel patch; a word tokenizer)."""
    from artv_jax import export, pretrained

    if export.is_image_model(path):
        unet, unet_params, text_encoder, text_params, tokenize, schedule, patch = export.import_image_model(path,
                                                                                                           dtype)
        return ImageBase(unet, unet_params, schedule, text_encoder, tokenize, PixelSpace(patch),
                         {"text": text_params})
    sd = pretrained.load_stable_diffusion(path)
    return ImageBase(sd.unet, sd.unet_params, NoiseSchedule.from_config(sd.scheduler_config),
                     sd.text_encoder.clone(dtype=dtype), _clip_tokenize(sd.tokenizer),
                     VAELatents(sd.vae.clone(dtype=dtype)), {"text": sd.text_encoder_params, "vae": sd.vae_params})


def _clip_tokenize(tokenizer):
    from artv_jax.tokenizers import CLIPTokenize

    return CLIPTokenize(tokenizer, tokenizer.model_max_length)
