"""Building blocks shared by the UNet, the VAE and the adapter (NHWC, diffusers semantics).

Every module here names its parameters as the diffusers module it mirrors, so
a Flax path maps 1:1 to a diffusers state-dict key (see `artv_jax.weights`).
Normalisation statistics and softmax run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def group_norm(num_groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    """A GroupNorm with torch's two-pass variance (exact parity with `torch.nn.GroupNorm`)."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch-exact LayerNorm (eps 1e-5, two-pass variance)."""
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1, padding: int | None = None) -> nn.Conv:
    """A 2-D convolution with torch's symmetric integer padding (default: 'same' for odd kernels)."""
    pad = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)), dtype=dtype, name=name)


def timestep_embedding(
    timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps, as diffusers' `get_timestep_embedding`."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """The two-layer MLP on the sinusoidal embedding (`linear_1`, SiLU, `linear_2`)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, emb: jax.Array) -> jax.Array:
        emb = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(emb)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(emb))


class ResnetBlock2D(nn.Module):
    """diffusers' `ResnetBlock2D` with SiLU, its timestep embedding applied as `time_embedding_norm` says.

    "default":     h = norm2(conv1(silu(norm1(x))) + proj(silu(temb)))
    "scale_shift": h = norm2(conv1(silu(norm1(x)))) * (1 + scale) + shift,  (scale, shift) = proj(silu(temb))
    out = (shortcut(x) + conv2(silu(h))) / output_scale_factor
    """

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    time_embedding_norm: str = "default"

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        if self.time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm must be 'default' or 'scale_shift', "
                             f"got {self.time_embedding_norm!r}.")
        scale_shift = self.time_embedding_norm == "scale_shift"
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        if temb is None and scale_shift:
            raise ValueError("a scale_shift ResnetBlock2D needs a timestep embedding.")
        if temb is not None:
            temb = nn.Dense(self.out_channels * (2 if scale_shift else 1), dtype=self.dtype,
                            name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        if scale_shift:
            scale, shift = jnp.split(temb, 2, axis=-1)
            h = group_norm(self.groups, self.eps, self.dtype, "norm2")(h) * (1 + scale) + shift
        else:
            h = group_norm(self.groups, self.eps, self.dtype, "norm2")(h if temb is None else h + temb)
        h = conv(self.out_channels, 3, self.dtype, "conv2")(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class AttentionPooling(nn.Module):
    """diffusers' `AttentionPooling`: a class token (the mean plus a learned vector) attends to itself and the
    sequence; returns its (B, D) output, heads concatenated (no output projection)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"attention pooling: width {d} is not divisible by {self.num_heads} heads.")
        position = self.param("positional_embedding", lambda k, s: jax.random.normal(k, s) / math.sqrt(d), (1, d))
        token = jnp.mean(x, axis=1, keepdims=True) + position.astype(x.dtype)
        seq = jnp.concatenate([token, x], axis=1)
        dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)
        out = multihead_attention(dense("q_proj")(token), dense("k_proj")(seq), dense("v_proj")(seq), self.num_heads)
        return out[:, 0]


class TextTimeEmbedding(nn.Module):
    """diffusers' `TextTimeEmbedding` (UNet `addition_embed_type="text"`): the text sequence pooled into a
    vector the size of the timestep embedding, which the UNet adds to it: LayerNorm, pooling, Dense, LayerNorm."""

    features: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text: jax.Array) -> jax.Array:
        h = layer_norm(self.dtype, "norm1")(text)
        h = AttentionPooling(self.num_heads, self.dtype, name="pool")(h)
        h = nn.Dense(self.features, dtype=self.dtype, name="proj")(h)
        return layer_norm(self.dtype, "norm2")(h)


class Downsample2D(nn.Module):
    """A stride-2 3x3 convolution (`conv`).

    `padding=1` is the UNet's symmetric padding; `padding=0` is the VAE's,
    which pads one pixel on the right and bottom only, as diffusers does.
    """

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.out_channels, 3, self.dtype, "conv", stride=2, padding=self.padding)(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """Nearest-neighbour upsampling NHWC: x2, or to `size` with torch's index rule floor(i * in / out)."""
    if size is None:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    (h, w), (out_h, out_w) = x.shape[1:3], size
    rows = (jnp.arange(out_h) * h) // out_h
    cols = (jnp.arange(out_w) * w) // out_w
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest x2 (or to an explicit size) followed by a 3x3 convolution (`conv`)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        return conv(self.out_channels, 3, self.dtype, "conv")(upsample_nearest(x, size))


def multihead_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, upcast: bool = False,
                        kv_mask: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over `heads` heads; (B, L, H*d) in and out.

    On GPU/TPU this is `jax.nn.dot_product_attention`, which picks fused kernels
    (cuDNN flash attention) where they apply. XLA:CPU has no fused kernel, and
    heads-major batched matmuls are about 2x faster there than the generic path
    (benchmarks/unet_vs_diffusers.py), so the CPU uses those. `upcast` computes
    in float32 (diffusers' `upcast_attention`, needed by SD 2.1 in half precision).
    `kv_mask` (B, Lk) bool excludes the keys where it is False.
    """
    out_dtype = q.dtype
    if upcast:
        q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
    b, lq, dim = q.shape
    if jax.default_backend() == "cpu":
        split = lambda a: a.reshape(b, a.shape[1], heads, dim // heads).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * (dim // heads) ** -0.5
        if kv_mask is not None:
            scores = jnp.where(kv_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.matmul(weights, v).transpose(0, 2, 1, 3)
    else:
        split = lambda a: a.reshape(b, a.shape[1], heads, dim // heads)
        mask = None if kv_mask is None else kv_mask[:, None, None, :]
        out = jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask)
    return out.reshape(b, lq, dim).astype(out_dtype)


class Attention(nn.Module):
    """diffusers' `Attention`: `to_q`, `to_k`, `to_v`, `to_out.0`, optional context (cross-attention).

    `qkv_bias` is False in the UNet's transformer blocks and True in the VAE.
    """

    heads: int
    dim_head: int
    out_dim: int
    qkv_bias: bool = False
    upcast: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, kv_mask: jax.Array | None = None) -> jax.Array:
        context = x if context is None else context
        inner = self.heads * self.dim_head
        q = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_q")(x)
        k = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_k")(context)
        v = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_v")(context)
        out = multihead_attention(q, k, v, self.heads, self.upcast, kv_mask)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="to_out_0")(out)


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
    """(B, H*r, W*r, C) -> (B, H, W, C*r*r) with torch's `PixelUnshuffle` channel order (c*r*r + i*r + j)."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"adapter input {h}x{w} is not divisible by downscale_factor {factor}.")
    x = x.reshape(b, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """The inverse of `pixel_unshuffle`: (B, H, W, C*r*r) -> (B, H*r, W*r, C) (torch's `PixelShuffle`)."""
    if factor == 1:
        return x
    b, h, w, crr = x.shape
    c = crr // (factor * factor)
    x = x.reshape(b, h, w, c, factor, factor)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, c)
