"""The UNet's spatial transformer: diffusers' `Transformer2DModel` for SD (continuous input, layer norm).

Self-attention can optionally attend to extra keys/values (`extra_context`):
ART·V's anchor attention appends the anchor frame's hidden states there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.layers import Attention, Dtype, conv, group_norm, layer_norm


class GEGLU(nn.Module):
    """`proj` to 2x inner features, then h * gelu(gate) with the exact (erf) GELU."""

    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """`net.0` (GEGLU) then `net.2` (linear back to `dim`); `net.1` is dropout in diffusers."""

    dim: int
    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GEGLU(self.dim * self.mult, self.dtype, name="net_0")(x)
        return nn.Dense(self.dim, dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text, GEGLU MLP; each with a residual."""

    dim: int
    heads: int
    upcast_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, extra_context: jax.Array | None = None,
                 extra_keep: jax.Array | None = None) -> jax.Array:
        attention = lambda name: Attention(
            self.heads, self.dim // self.heads, self.dim, upcast=self.upcast_attention, dtype=self.dtype, name=name
        )
        h = layer_norm(self.dtype, "norm1")(x)
        # What anchor attention caches for the anchor frame (a no-op unless
        # the caller makes "intermediates" mutable).
        self.sow("intermediates", "self_attn_input", h)
        kv, kv_mask = h, None
        if extra_context is not None:
            kv = jnp.concatenate([h, extra_context.astype(h.dtype)], axis=1)
            if extra_keep is not None:  # per example: attend to the extra keys or not
                kv_mask = jnp.concatenate([jnp.ones(h.shape[:2], bool),
                                           jnp.broadcast_to(extra_keep[:, None], extra_context.shape[:2])], axis=1)
        x = x + attention("attn1")(h, kv, kv_mask)
        x = x + attention("attn2")(layer_norm(self.dtype, "norm2")(x), context)
        return x + FeedForward(self.dim, dtype=self.dtype, name="ff")(layer_norm(self.dtype, "norm3")(x))


class Transformer2DModel(nn.Module):
    """GroupNorm, `proj_in` (1x1 conv or linear), transformer blocks, `proj_out`, residual.

    `extra_contexts`, if given, holds one (B, L', C) array per transformer
    block, appended to that block's self-attention keys and values;
    `extra_keep` (B,) bool switches them off per example.
    """

    heads: int
    num_layers: int = 1
    groups: int = 32
    use_linear_projection: bool = False
    upcast_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, extra_contexts=None, extra_keep=None) -> jax.Array:
        b, height, width, channels = x.shape
        h = group_norm(self.groups, 1e-6, self.dtype, "norm")(x)
        if self.use_linear_projection:
            h = nn.Dense(channels, dtype=self.dtype, name="proj_in")(h.reshape(b, height * width, channels))
        else:
            h = conv(channels, 1, self.dtype, "proj_in")(h).reshape(b, height * width, channels)
        for i in range(self.num_layers):
            extra = None if extra_contexts is None else extra_contexts[i]
            block = BasicTransformerBlock(channels, self.heads, self.upcast_attention, self.dtype, name=f"transformer_blocks_{i}")
            h = block(h, context, extra, extra_keep)
        if self.use_linear_projection:
            h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h).reshape(b, height, width, channels)
        else:
            h = conv(channels, 1, self.dtype, "proj_out")(h.reshape(b, height, width, channels))
        return h + x
