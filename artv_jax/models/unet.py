"""Stable Diffusion's `UNet2DConditionModel` in Flax linen (NHWC), for SD 1.x and 2.x configs.

`UNetConfig.from_diffusers(config_json)` reads a diffusers `unet/config.json`
and raises, naming the key, on any value this module does not implement.
Parameter paths map 1:1 to diffusers state-dict keys.

Besides diffusers' call, the UNet takes `adapter_features`: one map per down
block, added exactly where diffusers adds `down_intrablock_additional_residuals`
(T2I-Adapter), and `anchor_contexts`: per-transformer-block extra self-attention
keys/values (ART·V's optional anchor attention).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.layers import (
    Downsample2D,
    Dtype,
    ResnetBlock2D,
    TextTimeEmbedding,
    TimestepEmbedding,
    Upsample2D,
    conv,
    group_norm,
    timestep_embedding,
)
from artv_jax.models.transformer import Transformer2DModel

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")


def _per_block(value, n: int, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"unet config: {key} has {len(value)} entries for {n} down blocks.")
        if any(isinstance(v, (list, tuple)) for v in value):
            raise NotImplementedError(f"unet config: per-layer nested {key}={value!r} is not implemented.")
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The architecture of a UNet; per-block values are tuples over the down blocks.

    Defaults are diffusers' `UNet2DConditionModel` defaults (SD 1.x's layout).
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: tuple[int, ...] = (1280, 1280, 1280, 1280)
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    resnet_out_scale_factor: float = 1.0
    center_input_sample: bool = False
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    sample_size: int | None = None
    # A pooled text vector added to the timestep embedding ("text": diffusers' TextTimeEmbedding; None in SD).
    addition_embed_type: str | None = None
    addition_embed_type_num_heads: int = 64
    # How the ResNets apply that embedding: "default" adds it; "scale_shift" scales and shifts the normalised
    # features with it, a multiplicative conditioning (None and "default" in SD).
    resnet_time_scale_shift: str = "default"

    def __post_init__(self):
        n = len(self.block_out_channels)
        for key in ("down_block_types", "up_block_types", "layers_per_block", "transformer_layers_per_block",
                    "num_attention_heads", "cross_attention_dim"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"unet config: {key} needs {n} entries (one per block), got {getattr(self, key)!r}.")
        for key, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
            bad = [t for t in getattr(self, key) if t not in allowed]
            if bad:
                raise NotImplementedError(f"unet config: {key} contains {bad}; implemented: {allowed}.")
        for i, (channels, heads) in enumerate(zip(self.block_out_channels, self.num_attention_heads)):
            if self.down_block_types[i].startswith("CrossAttn") and channels % heads:
                raise ValueError(f"unet config: block {i} has {channels} channels, not divisible by {heads} heads.")
        if self.addition_embed_type not in (None, "text"):
            raise NotImplementedError(f"unet config: addition_embed_type={self.addition_embed_type!r} is not "
                                      "implemented (None or 'text').")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise NotImplementedError(f"unet config: resnet_time_scale_shift={self.resnet_time_scale_shift!r} is not "
                                      "implemented ('default' or 'scale_shift').")
        if self.addition_embed_type == "text":
            if len(set(self.cross_attention_dim)) != 1:
                raise ValueError(f"unet config: addition_embed_type='text' pools the text, which needs one "
                                 f"cross_attention_dim, got {self.cross_attention_dim}.")
            if self.cross_attention_dim[0] % self.addition_embed_type_num_heads:
                raise ValueError(f"unet config: cross_attention_dim {self.cross_attention_dim[0]} is not divisible by "
                                 f"addition_embed_type_num_heads={self.addition_embed_type_num_heads}.")

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "UNetConfig":
        """Builds the config from a diffusers `UNet2DConditionModel` config dict, strictly.

        Keys that change the computed function to something this module does
        not implement raise `NotImplementedError` naming them; unknown keys
        raise too, so nothing is silently ignored.
        """
        known_defaults = {
            # key: predicate for the values we implement
            "mid_block_type": lambda v: v == "UNetMidBlock2DCrossAttn",
            "only_cross_attention": lambda v: not any(v) if isinstance(v, (list, tuple)) else not v,
            "mid_block_only_cross_attention": lambda v: not v,
            "dropout": lambda v: v == 0.0,
            "act_fn": lambda v: v == "silu",
            "encoder_hid_dim": lambda v: v is None,
            "encoder_hid_dim_type": lambda v: v is None,
            "dual_cross_attention": lambda v: not v,
            "class_embed_type": lambda v: v is None,
            "addition_time_embed_dim": lambda v: v is None,
            "num_class_embeds": lambda v: v is None,
            "resnet_skip_time_act": lambda v: not v,
            "time_embedding_type": lambda v: v == "positional",
            "time_embedding_act_fn": lambda v: v is None,
            "timestep_post_act": lambda v: v is None,
            "time_cond_proj_dim": lambda v: v is None,
            "projection_class_embeddings_input_dim": lambda v: v is None,
            "attention_type": lambda v: v == "default",
            "class_embeddings_concat": lambda v: not v,
            "cross_attention_norm": lambda v: v is None,
            "reverse_transformer_layers_per_block": lambda v: v is None,
            "norm_num_groups": lambda v: v is not None,
        }
        fields = {f.name for f in dataclasses.fields(cls)}
        accepted = fields | set(known_defaults) | {"attention_head_dim"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in accepted)
        if unknown:
            raise NotImplementedError(f"unet config: unknown keys {unknown}; refusing to guess their meaning.")
        bad = [f"{k}={config[k]!r}" for k, ok in known_defaults.items() if k in config and not ok(config[k])]
        if bad:
            raise NotImplementedError("unet config: values not implemented by the Flax UNet: " + ", ".join(bad))

        n = len(config.get("block_out_channels", cls.block_out_channels))
        kwargs = {k: v for k, v in config.items() if k in fields}
        # diffusers' legacy naming: `attention_head_dim` is the number of heads
        # unless `num_attention_heads` is given.
        heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        kwargs["num_attention_heads"] = _per_block(heads, n, "num_attention_heads")
        for key, default in (("layers_per_block", 2), ("transformer_layers_per_block", 1), ("cross_attention_dim", 1280)):
            kwargs[key] = _per_block(config.get(key, default), n, key)
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key in config:
                kwargs[key] = tuple(config[key])
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `UNet2DConditionModel` config dict for this architecture (for export)."""
        out = dataclasses.asdict(self)
        out["attention_head_dim"] = list(out.pop("num_attention_heads"))
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


class CrossAttnDownBlock2D(nn.Module):
    """(resnet, transformer) x layers, then an optional stride-2 downsampler."""

    cfg: UNetConfig
    index: int
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context, residual=None, extra_contexts=None, extra_keep=None):
        cfg, i = self.cfg, self.index
        channels, has_attention = cfg.block_out_channels[i], cfg.down_block_types[i] == "CrossAttnDownBlock2D"
        resnet_cls = nn.remat(ResnetBlock2D) if self.remat else ResnetBlock2D
        transformer_cls = nn.remat(Transformer2DModel) if self.remat else Transformer2DModel
        n_tl = cfg.transformer_layers_per_block[i]
        skips = []
        for j in range(cfg.layers_per_block[i]):
            x = resnet_cls(channels, cfg.norm_num_groups, cfg.norm_eps, cfg.resnet_out_scale_factor, self.dtype,
                           cfg.resnet_time_scale_shift, name=f"resnets_{j}")(x, temb)
            if has_attention:
                extra = None if extra_contexts is None else extra_contexts[j * n_tl:(j + 1) * n_tl]
                x = transformer_cls(cfg.num_attention_heads[i], n_tl, cfg.norm_num_groups, cfg.use_linear_projection,
                                    cfg.upcast_attention, self.dtype, name=f"attentions_{j}")(x, context, extra, extra_keep)
            if has_attention and residual is not None and j == cfg.layers_per_block[i] - 1:
                x = x + residual
            skips.append(x)
        if i < len(cfg.block_out_channels) - 1:
            x = Downsample2D(channels, cfg.downsample_padding, self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        if not has_attention and residual is not None:
            # diffusers adds the adapter residual in place to the block's output
            # tensor, which is also its last skip connection.
            x = x + residual
            skips[-1] = x
        return x, skips


class CrossAttnUpBlock2D(nn.Module):
    """(concat skip, resnet, transformer) x (layers + 1), then an optional upsampler."""

    cfg: UNetConfig
    index: int  # index into the reversed (up) order
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, context, upsample_size=None, extra_contexts=None, extra_keep=None):
        cfg, i = self.cfg, self.index
        n = len(cfg.block_out_channels)
        channels = cfg.block_out_channels[n - 1 - i]
        heads = cfg.num_attention_heads[n - 1 - i]
        n_tl = cfg.transformer_layers_per_block[n - 1 - i]
        has_attention = cfg.up_block_types[i] == "CrossAttnUpBlock2D"
        resnet_cls = nn.remat(ResnetBlock2D) if self.remat else ResnetBlock2D
        transformer_cls = nn.remat(Transformer2DModel) if self.remat else Transformer2DModel
        for j in range(cfg.layers_per_block[n - 1 - i] + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet_cls(channels, cfg.norm_num_groups, cfg.norm_eps, cfg.resnet_out_scale_factor, self.dtype,
                           cfg.resnet_time_scale_shift, name=f"resnets_{j}")(x, temb)
            if has_attention:
                extra = None if extra_contexts is None else extra_contexts[j * n_tl:(j + 1) * n_tl]
                x = transformer_cls(heads, n_tl, cfg.norm_num_groups, cfg.use_linear_projection,
                                    cfg.upcast_attention, self.dtype, name=f"attentions_{j}")(x, context, extra, extra_keep)
        if i < n - 1:
            x = Upsample2D(channels, self.dtype, name="upsamplers_0")(x, upsample_size)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnet, then (transformer, resnet) once, at the lowest resolution."""

    cfg: UNetConfig
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context, extra_contexts=None, extra_keep=None):
        cfg = self.cfg
        channels = cfg.block_out_channels[-1]
        resnet = lambda name: ResnetBlock2D(channels, cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor,
                                            self.dtype, cfg.resnet_time_scale_shift, name=name)
        x = resnet("resnets_0")(x, temb)
        x = Transformer2DModel(cfg.num_attention_heads[-1], cfg.transformer_layers_per_block[-1], cfg.norm_num_groups,
                               cfg.use_linear_projection, cfg.upcast_attention, self.dtype,
                               name="attentions_0")(x, context, extra_contexts, extra_keep)
        return resnet("resnets_1")(x, temb)


def count_transformer_blocks(cfg: UNetConfig) -> list[int]:
    """Transformer blocks per UNet block in call order: down blocks, mid, up blocks."""
    n = len(cfg.block_out_channels)
    down = [cfg.layers_per_block[i] * cfg.transformer_layers_per_block[i] * (t == "CrossAttnDownBlock2D")
            for i, t in enumerate(cfg.down_block_types)]
    up = [(cfg.layers_per_block[n - 1 - i] + 1) * cfg.transformer_layers_per_block[n - 1 - i] * (t == "CrossAttnUpBlock2D")
          for i, t in enumerate(cfg.up_block_types)]
    return down + [cfg.transformer_layers_per_block[-1]] + up


class UNet2DConditionModel(nn.Module):
    """The SD UNet: `apply({"params": p}, sample, timesteps, encoder_hidden_states) -> (B, H, W, out_channels)`.

    Attributes:
      config: the architecture (`UNetConfig.from_diffusers` for a diffusers config).
      dtype: the compute dtype (parameters may be float32 masters).
      remat: rematerialise resnets and transformers in the down and up blocks
        (saves activation memory in training).
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array,
        adapter_features: Sequence[jax.Array] | None = None,
        anchor_contexts: Sequence[jax.Array] | None = None,
        anchor_keep: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the UNet output for a batch.

        Args:
          sample: (B, H, W, in_channels) noisy latents.
          timesteps: (B,) or scalar, int or float.
          encoder_hidden_states: (B, L, cross_attention_dim) text embeddings.
          adapter_features: optional T2I-Adapter maps, one per down block (in
            down-block order; diffusers' `down_intrablock_additional_residuals`).
          anchor_contexts: optional list with one (B, L', C) array per
            transformer block in call order (`count_transformer_blocks`),
            appended to each self-attention's keys and values.
          anchor_keep: optional (B,) bool; where False an example ignores its
            anchor contexts (exactly, by masking those keys).
        """
        cfg = self.config
        n = len(cfg.block_out_channels)
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"sample must be (B, H, W, {cfg.in_channels}) NHWC, got shape {sample.shape}.")
        batch = sample.shape[0]
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        if adapter_features is not None and len(adapter_features) > n:
            raise ValueError(f"{len(adapter_features)} adapter features for {n} down blocks.")
        contexts = _split_contexts(anchor_contexts, count_transformer_blocks(cfg))

        # The last upsamplers get an explicit size when H or W is not a multiple
        # of the total up factor (as diffusers' `forward_upsample_size`).
        forward_size = any(d % 2 ** (n - 1) for d in sample.shape[1:3])

        emb = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embed_dim, self.dtype, name="time_embedding")(emb.astype(self.dtype))
        context = encoder_hidden_states.astype(self.dtype)
        if cfg.addition_embed_type == "text":  # the pooled text joins the timestep embedding
            temb = temb + TextTimeEmbedding(cfg.time_embed_dim, cfg.addition_embed_type_num_heads, self.dtype,
                                            name="add_embedding")(context)

        x = sample.astype(self.dtype)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        x = conv(cfg.block_out_channels[0], cfg.conv_in_kernel, self.dtype, "conv_in")(x)
        skips = [x]
        for i in range(n):
            residual = None
            if adapter_features is not None and i < len(adapter_features):
                residual = adapter_features[i].astype(self.dtype)
            block = CrossAttnDownBlock2D(cfg, i, self.remat, self.dtype, name=f"down_blocks_{i}")
            x, block_skips = block(x, temb, context, residual, contexts.pop(0), anchor_keep)
            skips.extend(block_skips)

        x = UNetMidBlock2DCrossAttn(cfg, self.remat, self.dtype, name="mid_block")(x, temb, context, contexts.pop(0), anchor_keep)

        for i in range(n):
            block_skips = [skips.pop() for _ in range(cfg.layers_per_block[n - 1 - i] + 1)][::-1]
            size = skips[-1].shape[1:3] if (forward_size and i < n - 1) else None
            x = CrossAttnUpBlock2D(cfg, i, self.remat, self.dtype, name=f"up_blocks_{i}")(
                x, block_skips, temb, context, size, contexts.pop(0), anchor_keep)

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, self.dtype, "conv_norm_out")(x))
        return conv(cfg.out_channels, cfg.conv_out_kernel, self.dtype, "conv_out")(x)


def _split_contexts(anchor_contexts, counts: list[int]) -> list:
    """Splits the flat per-transformer-block list into one (possibly None) list per UNet block."""
    if anchor_contexts is None:
        return [None] * len(counts)
    if len(anchor_contexts) != sum(counts):
        raise ValueError(f"anchor_contexts has {len(anchor_contexts)} entries; the UNet has {sum(counts)} transformer blocks.")
    out, start = [], 0
    for c in counts:
        out.append(list(anchor_contexts[start:start + c]) if c else None)
        start += c
    return out
