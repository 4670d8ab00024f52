"""Stable Diffusion's `AutoencoderKL` in Flax linen (NHWC).

    mean, logvar = vae.apply({"params": p}, images, method="encode")   # images in [-1, 1]
    latents = vae.config.scaling_factor * mean                          # or a sample
    images = vae.apply({"params": p}, latents / vae.config.scaling_factor, method="decode")

`encode` returns the Gaussian posterior's mean and log-variance (clamped to
[-30, 20] as diffusers does) *before* scaling; `decode` takes unscaled latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.layers import (
    Downsample2D,
    Dtype,
    ResnetBlock2D,
    Upsample2D,
    conv,
    group_norm,
    multihead_attention,
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The architecture of an `AutoencoderKL` and its latent scaling."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    sample_size: Any = None
    force_upcast: bool = True

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "VAEConfig":
        """Builds the config from a diffusers `AutoencoderKL` config dict, strictly."""
        n = len(config.get("block_out_channels", cls.block_out_channels))
        checks = {
            "down_block_types": lambda v: list(v) == ["DownEncoderBlock2D"] * n,
            "up_block_types": lambda v: list(v) == ["UpDecoderBlock2D"] * n,
            "act_fn": lambda v: v == "silu",
            "latents_mean": lambda v: v is None,
            "latents_std": lambda v: v is None,
        }
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in fields | set(checks))
        if unknown:
            raise NotImplementedError(f"vae config: unknown keys {unknown}; refusing to guess their meaning.")
        bad = [f"{k}={config[k]!r}" for k, ok in checks.items() if k in config and not ok(config[k])]
        if bad:
            raise NotImplementedError("vae config: values not implemented by the Flax VAE: " + ", ".join(bad))
        kwargs = {k: v for k, v in config.items() if k in fields}
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `AutoencoderKL` config dict for this architecture (for export)."""
        out = dataclasses.asdict(self)
        n = len(self.block_out_channels)
        out["block_out_channels"] = list(self.block_out_channels)
        out["down_block_types"] = ["DownEncoderBlock2D"] * n
        out["up_block_types"] = ["UpDecoderBlock2D"] * n
        return out


class MidBlock(nn.Module):
    """diffusers' `UNetMidBlock2D` without time embedding: resnet, [attention], resnet."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock2D(self.channels, self.groups, 1e-6, dtype=self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = _VAEAttention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock2D(self.channels, self.groups, 1e-6, dtype=self.dtype, name="resnets_1")(x)


class _VAEAttention(nn.Module):
    """The VAE mid-block attention: GroupNorm, one-head self-attention over pixels, residual.

    Parameters as diffusers' VAE `Attention`: `group_norm`, `to_q/k/v` (with
    bias), `to_out.0`.
    """

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = group_norm(self.groups, 1e-6, self.dtype, "group_norm")(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=name)(y) for name in ("to_q", "to_k", "to_v"))
        y = multihead_attention(q, k, v, heads=1, upcast=True)
        y = nn.Dense(c, dtype=self.dtype, name="to_out_0")(y)
        return x + y.reshape(b, h, w, c)


class Encoder(nn.Module):
    """conv_in, down blocks (resnets + stride-2 conv), mid block, norm, SiLU, conv_out to 2x latents."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = conv(cfg.block_out_channels[0], 3, self.dtype, "conv_in")(x)
        for i, channels in enumerate(cfg.block_out_channels):
            block = _EncoderBlock(channels, cfg.layers_per_block, cfg.norm_num_groups,
                                  i < len(cfg.block_out_channels) - 1, self.dtype, name=f"down_blocks_{i}")
            x = block(x)
        x = MidBlock(cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype,
                     name="mid_block")(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, 1e-6, self.dtype, "conv_norm_out")(x))
        return conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(x)


class _EncoderBlock(nn.Module):
    """diffusers' `DownEncoderBlock2D`."""

    channels: int
    num_layers: int
    groups: int
    downsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.channels, self.groups, 1e-6, dtype=self.dtype, name=f"resnets_{j}")(x)
        if self.downsample:
            x = Downsample2D(self.channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
        return x


class _DecoderBlock(nn.Module):
    """diffusers' `UpDecoderBlock2D`."""

    channels: int
    num_layers: int
    groups: int
    upsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.channels, self.groups, 1e-6, dtype=self.dtype, name=f"resnets_{j}")(x)
        if self.upsample:
            x = Upsample2D(self.channels, self.dtype, name="upsamplers_0")(x)
        return x


class Decoder(nn.Module):
    """conv_in, mid block, up blocks (resnets + nearest x2 + conv), norm, SiLU, conv_out to pixels."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        channels = cfg.block_out_channels[::-1]
        x = conv(channels[0], 3, self.dtype, "conv_in")(z)
        x = MidBlock(channels[0], cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(channels):
            block = _DecoderBlock(c, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(channels) - 1,
                                  self.dtype, name=f"up_blocks_{i}")
            x = block(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, 1e-6, self.dtype, "conv_norm_out")(x))
        return conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """The SD VAE. `__call__` (used for init) encodes then decodes the posterior mean."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), dtype=self.dtype)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images (B, H, W, 3) in [-1, 1] -> (mean, logvar), each (B, H/f, W/f, latent_channels)."""
        moments = self.encoder(images.astype(self.dtype))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Unscaled latents (B, h, w, latent_channels) -> images (B, h*f, w*f, 3), about [-1, 1]."""
        z = latents.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        mean, _ = self.encode(images)
        return self.decode(mean)
