"""Strict conversion between PyTorch state dicts and Flax parameter trees.

A Flax parameter path maps 1:1 to a PyTorch state-dict key: list indices are
joined to their module name (`down_blocks.0.resnets.1.conv1.weight` is
`down_blocks_0/resnets_1/conv1/kernel`), and the leaf name and layout change
with the layer kind:

        Flax leaf    rank   PyTorch leaf   layout change
        kernel       4      weight         (O, I, kh, kw) -> (kh, kw, I, O)
        kernel       2      weight         (O, I) -> (I, O)
        scale        1      weight         none (GroupNorm / LayerNorm)
        embedding    2      weight         none (nn.Embedding)
        bias         any    bias           none

Conversion runs against the `jax.eval_shape` of the target tree, so every
Flax leaf must find its key with the right shape and every key must be used:
`convert_state_dict` raises one `WeightMappingError` that lists all missing,
unexpected and misshaped keys. `to_state_dict` is the exact inverse (used by
export). Only NumPy is needed here; torch is imported lazily and only for
`.bin` files.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

_INDEX = re.compile(r"^(.*)_(\d+)$")
# Module names that end in `_<digit>` in PyTorch itself, not list indices.
_NOT_AN_INDEX = frozenset({"linear_1", "linear_2"})


class WeightMappingError(ValueError):
    """A state dict does not fit the target parameter tree; names every offending key."""

    def __init__(self, component: str, missing=(), unexpected=(), misshaped=()):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.misshaped = sorted(misshaped)
        lines = [f"{component}: the weights do not match the model built from its config."]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, got, want in self.misshaped:
            lines.append(f"  misshaped key {key}: file has {got}, model needs {want}")
        super().__init__("\n".join(lines))


def flax_path_to_torch_key(path: tuple[str, ...]) -> tuple[str, str]:
    """Returns (torch key, flax leaf name) for a Flax parameter path."""
    parts = []
    for name in path[:-1]:
        match = None if name in _NOT_AN_INDEX else _INDEX.match(name)
        parts.extend([match.group(1), match.group(2)] if match else [name])
    leaf = path[-1]
    parts.append({"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf))
    return ".".join(parts), leaf


def _torch_to_flax_array(leaf: str, value: np.ndarray, want_ndim: int) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4 and want_ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 4 and want_ndim == 2 and value.shape[2:] == (1, 1):
        # A 1x1 convolution stored where the module uses a Dense layer (legacy VAE attention).
        return np.transpose(value[:, :, 0, 0], (1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return np.transpose(value, (1, 0))
    return value


def _flax_to_torch_array(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if leaf == "kernel" and value.ndim == 2:
        return np.transpose(value, (1, 0))
    return value


def convert_state_dict(
        state_dict: Mapping[str, np.ndarray],
        target: Any,
        *,
        component: str = "model",
        ignore: Iterable[str] = (),
        dtype: Any = None,
) -> dict:
    """Converts a PyTorch state dict to a Flax param tree shaped like `target`.

    Args:
        state_dict: torch key -> NumPy array.
        target: a pytree of arrays or `jax.ShapeDtypeStruct` (the `eval_shape` of
            the module's params) fixing the set of leaves and their shapes.
        component: a name for error messages ("unet", "vae", ...).
        ignore: regular expressions for keys that are known non-parameters
            (buffers such as CLIP's `position_ids`); matching keys are dropped.
        dtype: the dtype of the returned leaves (default: the target's).

    Returns:
        A nested dict of NumPy arrays with exactly the target's structure.

    Raises:
        WeightMappingError: listing every missing, unexpected and misshaped key.
    """
    ignore_res = [re.compile(p) for p in ignore]
    remaining = {k: v for k, v in state_dict.items() if not any(r.fullmatch(k) for r in ignore_res)}
    flat_target = traverse_util.flatten_dict(target)
    out, missing, misshaped = {}, [], []
    for path, want in flat_target.items():
        key, leaf = flax_path_to_torch_key(path)
        if key not in remaining:
            missing.append(key)
            continue
        value = _torch_to_flax_array(leaf, np.asarray(remaining.pop(key)), len(want.shape))
        if tuple(value.shape) != tuple(want.shape):
            misshaped.append((key, tuple(value.shape), tuple(want.shape)))
            continue
        out[path] = value.astype(dtype or want.dtype)
    if missing or remaining or misshaped:
        raise WeightMappingError(component, missing, remaining.keys(), misshaped)
    return traverse_util.unflatten_dict(out)


def to_state_dict(params: Any) -> dict[str, np.ndarray]:
    """The inverse of `convert_state_dict`: Flax params -> torch-layout NumPy state dict."""
    state = {}
    for path, value in traverse_util.flatten_dict(params).items():
        key, leaf = flax_path_to_torch_key(tuple(str(p) for p in path))
        state[key] = np.ascontiguousarray(_flax_to_torch_array(leaf, np.asarray(value)))
    return state


def rename_keys(state_dict: Mapping[str, np.ndarray], rules: Iterable[tuple[str, str]]) -> dict:
    """Applies regex substitutions `(pattern, replacement)` to every key, in order."""
    rules = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


# ----------------------------------------------------------------------------
# Reading component directories.


def read_config(path: str) -> dict:
    """Reads `config.json` from a component directory, with a clear error if absent."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} is not a model component directory: no config.json in it.")
    with open(config_path) as f:
        return json.load(f)


def weight_files(path: str) -> list[str]:
    """The weight files of a component directory: safetensors preferred, `.bin` otherwise.

    Sharded checkpoints (`*.index.json` beside numbered shards) are read whole.
    A `.fp16.` variant is only used when it is the only one present.
    """
    for ext in ("safetensors", "bin"):
        files = sorted(glob.glob(os.path.join(path, f"*.{ext}")))
        full = [f for f in files if ".fp16." not in os.path.basename(f)]
        if full or files:
            return full or files
    raise FileNotFoundError(f"no *.safetensors or *.bin weight file in {path!r}.")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads every weight file of a component directory into key -> float NumPy array.

    safetensors files need no torch; `.bin` files are loaded with torch (CPU,
    `weights_only=True`). bf16 tensors are widened to float32.
    """
    state = {}
    for file in weight_files(path):
        if file.endswith(".safetensors"):
            state.update(_read_safetensors(file))
        else:
            state.update(_read_torch_bin(file))
    return state


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(file, framework="numpy") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    except (TypeError, ValueError) as e:
        # bfloat16 has no NumPy dtype in safetensors' numpy framework; read via flax
        # (ml_dtypes) instead.
        if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
            raise
        from safetensors.flax import load_file

        out = {k: np.asarray(v, dtype=np.float32) for k, v in load_file(file).items()}
    return out


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{file} is a PyTorch pickle; reading it needs torch (or convert it to safetensors).") from e
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def check_config(component: str, config: Mapping[str, Any], supported: Mapping[str, Callable[[Any], bool]]) -> None:
    """Raises naming every config key whose value the Flax module does not implement.

    `supported` maps a config key to a predicate on its value; keys absent from
    the config are fine (the module's default applies).
    """
    bad = [f"{k}={config[k]!r}" for k, ok in supported.items() if k in config and not ok(config[k])]
    if bad:
        raise NotImplementedError(f"{component}: config values not implemented by the Flax module: " + ", ".join(bad))
