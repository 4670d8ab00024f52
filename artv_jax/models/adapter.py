"""The ART·V reference adapter: diffusers' `T2IAdapter(adapter_type="full_adapter")` in Flax (NHWC).

Input: `concat(refs, anchor, noise-level plane)` (`adapter_input`); output: one
feature map per stage, added by the UNet where diffusers adds
`down_intrablock_additional_residuals`. The parameter tree is the diffusers
one below `adapter.` (`conv_in`, `body.i.in_conv`, `body.i.resnets.j.block1/2`),
so an export loads into `T2IAdapter` unchanged.

Zero initialisation (ART·V, ours): every stage output is a residual stream
that starts at `conv_in`'s output, and all biases start at zero, so a zero
`conv_in` kernel makes every feature map exactly zero at step 0 (the UNet is
then exactly the pretrained one). Gradients still reach `conv_in` through the
residual identities, so the adapter starts learning at once.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax import weights
from artv_jax.diffusion.masked import noise_level_plane
from artv_jax.models.layers import Dtype, conv


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
    """(B, H*r, W*r, C) -> (B, H, W, C*r*r) with torch's `PixelUnshuffle` channel order (c*r*r + i*r + j)."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"adapter input {h}x{w} is not divisible by downscale_factor {factor}.")
    x = x.reshape(b, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)


def avg_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, torch's `ceil_mode=True` (partial edge windows average what they cover)."""
    b, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    ones = jnp.ones((1, h, w, 1), x.dtype)
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    total = jnp.pad(x, pad).reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum(axis=(2, 4))
    count = jnp.pad(ones, pad).reshape(1, (h + ph) // 2, 2, (w + pw) // 2, 2, 1).sum(axis=(2, 4))
    return total / count


class AdapterResnetBlock(nn.Module):
    """x + block2(relu(block1(x))): a 3x3 then a 1x1 convolution."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(conv(self.channels, 3, self.dtype, "block1")(x))
        return x + conv(self.channels, 1, self.dtype, "block2")(h)


class AdapterBlock(nn.Module):
    """Optional 2x average pool, optional 1x1 `in_conv` to change channels, residual blocks."""

    channels: int
    num_res_blocks: int
    down: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.down:
            x = avg_pool_ceil(x)
        if x.shape[-1] != self.channels:
            x = conv(self.channels, 1, self.dtype, "in_conv")(x)
        for j in range(self.num_res_blocks):
            x = AdapterResnetBlock(self.channels, self.dtype, name=f"resnets_{j}")(x)
        return x


class FullAdapter(nn.Module):
    """diffusers' `FullAdapter`: pixel-unshuffle, `conv_in`, one `AdapterBlock` per stage.

    Returns the list of stage outputs (NHWC), the first at the input
    resolution / downscale_factor, each next one 2x smaller.
    """

    in_channels: int
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8
    zero_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"adapter expects {self.in_channels} input channels, got {x.shape[-1]}.")
        x = pixel_unshuffle(x.astype(self.dtype), self.downscale_factor)
        kernel_init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
        x = nn.Conv(self.channels[0], (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init, dtype=self.dtype,
                    name="conv_in")(x)
        features = []
        for i, channels in enumerate(self.channels):
            x = AdapterBlock(channels, self.num_res_blocks, down=i > 0, dtype=self.dtype, name=f"body_{i}")(x)
            features.append(x)
        return features


def adapter_input(refs: jax.Array, anchor: jax.Array, level: jax.Array) -> jax.Array:
    """concat(refs (B, H, W, R*C), anchor (B, H, W, C), level plane (B, H, W, 1)) on channels."""
    plane = noise_level_plane(level, refs.shape).astype(refs.dtype)
    return jnp.concatenate([refs, anchor.astype(refs.dtype), plane], axis=-1)


def adapter_config_dict(adapter: FullAdapter) -> dict[str, Any]:
    """The diffusers `T2IAdapter` config for this adapter (for export)."""
    return {"_class_name": "T2IAdapter", "in_channels": adapter.in_channels, "channels": list(adapter.channels),
            "num_res_blocks": adapter.num_res_blocks, "downscale_factor": adapter.downscale_factor,
            "adapter_type": "full_adapter"}


def adapter_from_config(config: dict[str, Any], dtype=jnp.float32) -> FullAdapter:
    """A `FullAdapter` from a diffusers `T2IAdapter` config dict, strictly."""
    weights.check_config("adapter", config, {"adapter_type": lambda v: v == "full_adapter"})
    known = {"in_channels", "channels", "num_res_blocks", "downscale_factor", "adapter_type"}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise NotImplementedError(f"adapter config: unknown keys {unknown}.")
    return FullAdapter(in_channels=config.get("in_channels", 3), channels=tuple(config.get("channels", (320, 640, 1280, 1280))),
                       num_res_blocks=config.get("num_res_blocks", 2), downscale_factor=config.get("downscale_factor", 8),
                       zero_init=False, dtype=dtype)


def load_adapter(path: str, dtype=jnp.float32) -> tuple[FullAdapter, dict]:
    """Loads a diffusers `T2IAdapter` directory (full_adapter) strictly."""
    module = adapter_from_config(weights.read_config(path), dtype)
    size = module.downscale_factor * 2 ** (len(module.channels) - 1)
    target = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, module.in_channels)))["params"]
    # diffusers' T2IAdapter holds the FullAdapter as `adapter`: its keys start with "adapter.".
    params = weights.convert_state_dict(weights.read_state_dict(path), {"adapter": target}, component="adapter",
                                        dtype=dtype)["adapter"]
    return module, jax.tree.map(jnp.asarray, params)
