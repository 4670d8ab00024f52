"""The ART·V reference adapter: diffusers' `T2IAdapter(adapter_type="full_adapter")` in Flax (NHWC).

Input: `concat(refs, anchor, noise-level plane)` (`adapter_input`); output: one
feature map per stage, which the UNet adds where diffusers adds
`down_intrablock_additional_residuals`. The parameter tree is the diffusers
one below `adapter.` (`conv_in`, `body_i/in_conv`, `body_i/resnets_j/block1|2`),
so `adapter_state_dict(params)` loads into `T2IAdapter` with `strict=True` and
`load_adapter` reads a diffusers `T2IAdapter` directory (strictly, via
`artv_jax.weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax import weights
from artv_jax.models.layers import Dtype, conv, pixel_unshuffle

__all__ = [
    "FullAdapter", "AdapterBlock", "AdapterResnetBlock", "pixel_unshuffle", "avg_pool_ceil", "noise_level_plane",
    "adapter_input", "adapter_in_channels", "adapter_config_dict", "adapter_from_config", "adapter_state_dict",
    "adapter_params_from_state_dict", "load_adapter",
]

# diffusers' `T2IAdapter` holds the `FullAdapter` as its `adapter` attribute.
STATE_DICT_PREFIX = "adapter."


def avg_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, as torch's `AvgPool2d(2, 2, ceil_mode=True)`.

    With an odd height or width the last window hangs over the edge; torch
    (padding 0) averages only the elements it covers, and so does this.
    """
    b, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    total = jnp.pad(x, pad).reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum(axis=(2, 4))
    if not (ph or pw):
        return total / 4
    count = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pad).reshape(1, (h + ph) // 2, 2, (w + pw) // 2, 2, 1)
    return total / count.sum(axis=(2, 4))


class AdapterResnetBlock(nn.Module):
    """diffusers' `AdapterResnetBlock`: x + block2(relu(block1(x))), a 3x3 then a 1x1 convolution."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(conv(self.channels, 3, self.dtype, "block1")(x))
        return x + conv(self.channels, 1, self.dtype, "block2")(h)


class AdapterBlock(nn.Module):
    """diffusers' `AdapterBlock`: optional 2x average pool, 1x1 `in_conv` if channels change, residual blocks."""

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
    """diffusers' `FullAdapter` (NHWC): pixel-unshuffle, 3x3 `conv_in`, one `AdapterBlock` per stage.

    Call on (B, H, W, in_channels) with H and W divisible by `downscale_factor`;
    returns the list of stage outputs (NHWC): stage 0 at H / downscale_factor
    with `channels[0]` channels, each next stage 2x smaller (ceil) with
    `channels[i]` channels — exactly `T2IAdapter.forward`, transposed.

    Attributes:
      in_channels: channels of the input (refs + anchor + level plane: see
        `adapter_in_channels`).
      channels: output channels per stage (one stage per UNet down block).
      num_res_blocks: `AdapterResnetBlock`s per stage.
      downscale_factor: the pixel-unshuffle factor (1 when the input is
        already at the UNet's latent resolution, as in ART·V).
      zero_init_output: ART·V's zero initialisation (ours), below. Only
        affects `init`; loaded weights are used as they are.
      dtype: compute dtype (parameters stay float32).

    Zero initialisation. With `zero_init_output=True` `conv_in`'s kernel starts
    at zero, and every bias starts at zero (Flax's default for all of them).

    * Every feature map is exactly 0 at init, for any finite input: `conv_in`
      outputs 0; every stage maps 0 to 0 (the pool of 0 is 0, `in_conv(0)` is
      its bias 0, and each residual block gives 0 + block2(relu(block1(0)))
      = block2(0) = 0); so the UNet sees zero residuals and step 0 of
      fine-tuning is exactly the pretrained model.
    * Why `conv_in` and not the last `block2` of each stage (the ControlNet
      "zero conv" recipe): a stage's output is a residual stream,
      input + Σ block2(...), so zeroing `block2`s still lets `conv_in`'s output
      through to the UNet. The stream has to be cut at its source, and
      `T2IAdapter` has no per-stage output conv to zero (adding one would
      break the diffusers structure, hence the export).
    * It acts like a zero output gain: with zero biases everything after
      `conv_in` (ReLU, convolutions, average pools) is positively homogeneous
      of degree 1, so `conv_in` kernel α·K gives α times the features of K;
      the rest of the network keeps its random initialisation.
    * It still learns from step 0: at init the ReLU branches are inactive (the
      residual blocks' inputs are 0, and relu'(0) = 0 in JAX), so each feature
      map is a linear function of `conv_in`'s output through the identity
      paths, pools and `in_conv`s, whose Jacobian is not zero. Hence the
      gradients of `conv_in`'s kernel and bias and of the `in_conv` and
      `block2` biases are non-zero for a generic loss. The other kernels and
      the `block1` biases get exactly zero gradient at step 0 (their inputs or
      ReLU slopes are zero) and start moving once `conv_in` is non-zero after
      the first update.

    With `zero_init_output=False` kernels use Flax's default (LeCun normal)
    initialiser — not torch's — and biases are zero.
    """

    in_channels: int
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8
    zero_init_output: bool = True
    dtype: Dtype = jnp.float32

    @property
    def total_downscale_factor(self) -> int:
        """How much smaller the last feature map is than the input (diffusers' name)."""
        return self.downscale_factor * 2 ** (len(self.channels) - 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        _validate_structure(self.in_channels, self.channels, self.num_res_blocks, self.downscale_factor)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"adapter expects (B, H, W, {self.in_channels}) input (NHWC), got shape {x.shape}.")
        x = pixel_unshuffle(x.astype(self.dtype), self.downscale_factor)
        kernel_init = nn.initializers.zeros if self.zero_init_output else nn.linear.default_kernel_init
        x = nn.Conv(self.channels[0], (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name="conv_in")(x)
        features = []
        for i, channels in enumerate(self.channels):
            x = AdapterBlock(channels, self.num_res_blocks, down=i > 0, dtype=self.dtype, name=f"body_{i}")(x)
            features.append(x)
        return features


def _validate_structure(in_channels, channels, num_res_blocks, downscale_factor) -> None:
    """Raises naming the first adapter hyper-parameter that diffusers' `FullAdapter` cannot have."""
    def positive_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

    if not positive_int(in_channels):
        raise ValueError(f"adapter in_channels must be a positive int, got {in_channels!r}.")
    if not isinstance(channels, (list, tuple)) or not channels or not all(positive_int(c) for c in channels):
        raise ValueError(f"adapter channels must be a non-empty list of positive ints, got {channels!r}.")
    if not (isinstance(num_res_blocks, (int, np.integer)) and not isinstance(num_res_blocks, bool)
            and num_res_blocks >= 0):
        raise ValueError(f"adapter num_res_blocks must be an int >= 0, got {num_res_blocks!r}.")
    if not positive_int(downscale_factor):
        raise ValueError(f"adapter downscale_factor must be a positive int, got {downscale_factor!r}.")


# ------------------------------------------------------------------ input

def adapter_in_channels(num_ref_frames: int, latent_channels: int = 4) -> int:
    """Input channels of the ART·V adapter: R reference latents, the anchor latent and the level plane."""
    if num_ref_frames < 1 or latent_channels < 1:
        raise ValueError(f"need num_ref_frames >= 1 and latent_channels >= 1, got {num_ref_frames}, {latent_channels}.")
    return latent_channels * (num_ref_frames + 1) + 1


def noise_level_plane(level, shape) -> jax.Array:
    """The adapter's constant input plane: (B, H, W, 1) filled with each example's level s in [0, 1].

    `shape` is (B, H, W) or any (B, H, W, ...) whose first three entries are used.
    """
    b, h, w = tuple(shape)[:3]
    level = jnp.broadcast_to(jnp.asarray(level, jnp.float32), (b,))
    return jnp.broadcast_to(level[:, None, None, None], (b, h, w, 1))


def adapter_input(
        refs: jax.Array | Sequence[jax.Array],
        anchor: jax.Array,
        noise_level: Any,
        latent_channels: int | None = None,
) -> jax.Array:
    """The adapter input: concat(refs, anchor, noise-level plane) on channels, (B, H, W, (R + 1)·C + 1).

    Args:
      refs: the R reference latents, either stacked on channels (B, H, W, R·C)
        or a sequence of R arrays (B, H, W, C), concatenated in the given order.
      anchor: the anchor latent (B, H, W, C).
      noise_level: the references' noise-augmentation level s, a scalar or
        (B,); it becomes a constant (B, H, W, 1) plane.
      latent_channels: C; default the anchor's channel count.

    Returns:
      An array of the refs' dtype (the anchor and the plane are cast to it).
    """
    if isinstance(refs, (list, tuple)):
        if not refs:
            raise ValueError("adapter_input needs at least one reference latent, got an empty list.")
        refs = jnp.concatenate([jnp.asarray(r) for r in refs], axis=-1)
    refs, anchor = jnp.asarray(refs), jnp.asarray(anchor)
    c = anchor.shape[-1] if latent_channels is None else latent_channels
    if anchor.ndim != 4 or anchor.shape[-1] != c:
        raise ValueError(f"anchor must be (B, H, W, {c}) (NHWC), got shape {anchor.shape}.")
    if refs.ndim != 4 or refs.shape[:3] != anchor.shape[:3] or refs.shape[-1] % c or refs.shape[-1] == 0:
        raise ValueError(f"refs must be (B, H, W, R*{c}) with (B, H, W) = {anchor.shape[:3]} like the anchor, "
                         f"got shape {refs.shape}.")
    plane = noise_level_plane(noise_level, refs.shape).astype(refs.dtype)
    return jnp.concatenate([refs, anchor.astype(refs.dtype), plane], axis=-1)


# ------------------------------------------------------------------ diffusers config and weights

_CONFIG_KEYS = ("in_channels", "channels", "num_res_blocks", "downscale_factor", "adapter_type")


def adapter_config_dict(module: FullAdapter) -> dict[str, Any]:
    """The diffusers `T2IAdapter` config (`config.json`) of `module`, for export."""
    return {"_class_name": "T2IAdapter", "in_channels": int(module.in_channels),
            "channels": [int(c) for c in module.channels], "num_res_blocks": int(module.num_res_blocks),
            "downscale_factor": int(module.downscale_factor), "adapter_type": "full_adapter"}


def adapter_from_config(config: Mapping[str, Any], dtype: Dtype = jnp.float32,
                        zero_init_output: bool = True) -> FullAdapter:
    """A `FullAdapter` from a diffusers `T2IAdapter` config dict, strictly.

    Missing keys take diffusers' defaults. Raises NotImplementedError naming
    the key for `adapter_type` other than "full_adapter" (the XL and light
    adapters are not implemented), a `_class_name` other than `T2IAdapter`,
    or an unknown key; ValueError for an invalid value.
    """
    weights.check_config("adapter", config, {
        "adapter_type": lambda v: v == "full_adapter",
        "_class_name": lambda v: v == "T2IAdapter",
    })
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _CONFIG_KEYS)
    if unknown:
        raise NotImplementedError(f"adapter: config keys not implemented by the Flax module: {unknown}.")
    channels = config.get("channels", [320, 640, 1280, 1280])
    module_args = dict(in_channels=config.get("in_channels", 3), channels=channels,
                       num_res_blocks=config.get("num_res_blocks", 2),
                       downscale_factor=config.get("downscale_factor", 8))
    _validate_structure(**module_args)
    module_args["channels"] = tuple(int(c) for c in channels)
    return FullAdapter(**module_args, zero_init_output=zero_init_output, dtype=dtype)


def adapter_state_dict(params: Any) -> dict[str, np.ndarray]:
    """`FullAdapter` params -> the torch-layout state dict of a diffusers `T2IAdapter` (keys `adapter.…`)."""
    return {STATE_DICT_PREFIX + k: v for k, v in weights.to_state_dict(params).items()}


def adapter_params_from_state_dict(module: FullAdapter, state_dict: Mapping[str, np.ndarray],
                                   dtype: Dtype = None) -> dict:
    """A diffusers `T2IAdapter` state dict (keys `adapter.…`) -> `FullAdapter` params, strictly.

    Raises `weights.WeightMappingError` naming (with their `adapter.` prefix,
    as in the file) every missing, unexpected and misshaped key.
    """
    size = module.total_downscale_factor
    target = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, module.in_channels)))
    # Converting against {"adapter": target} makes the keys carry diffusers' prefix, so a
    # key without it is reported as unexpected rather than silently renamed.
    params = weights.convert_state_dict(state_dict, {"adapter": target["params"]}, component="adapter",
                                        dtype=dtype)["adapter"]
    return jax.tree.map(jnp.asarray, params)


def load_adapter(path: str, dtype: Dtype = jnp.float32) -> tuple[FullAdapter, dict]:
    """Reads a diffusers `T2IAdapter` directory (config.json + weights): (module, params), strictly.

    `dtype` is both the module's compute dtype and the dtype of the returned params.
    """
    module = adapter_from_config(weights.read_config(path), dtype, zero_init_output=False)
    return module, adapter_params_from_state_dict(module, weights.read_state_dict(path), dtype)
