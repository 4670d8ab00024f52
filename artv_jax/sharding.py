"""The device mesh and the logical-axis sharding of parameters and batches.

The mesh has axes `('data', 'fsdp')`. Every array dimension gets a *logical*
name and a short list of rules (in the config) maps logical names to mesh
axes, as in maxtext:

    rules = (("batch", ("data", "fsdp")), ("out", "fsdp"), ("vocab", "fsdp"))

Parameters stay a plain pytree whose paths mirror the diffusers keys, so their
logical names are derived from the leaf kind rather than annotated inside the
modules (the UNet, VAE, CLIP and adapter have only four kinds of leaf):

    conv kernel (kh, kw, in, out)  -> ("conv", "conv", "in", "out")
    dense kernel (in, out)         -> ("in", "out")
    embedding (vocab, dim)         -> ("vocab", "dim")
    bias, scale (n,)               -> ("norm",)

A dimension whose size does not divide over its mesh axes is replicated
instead (conv_out's 4 or 5 channels, say); `describe` lists those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, Any]]


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
    """A `('data', 'fsdp')` mesh; one entry may be -1 to take the remaining devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 2 or shape.count(-1) > 1:
        raise ValueError(f"mesh shape must be (data, fsdp) with at most one -1, got {tuple(shape)}.")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if devices.size % known:
            raise ValueError(f"{devices.size} devices do not divide into a mesh of shape {tuple(shape)}.")
        shape[shape.index(-1)] = devices.size // known
    if int(np.prod(shape)) != devices.size:
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, there are {devices.size}.")
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=list(devices.flat))
    except (AssertionError, NotImplementedError, ValueError):
        grid = devices.reshape(shape)
    return Mesh(grid, MESH_AXES)


def param_logical_axes(path: tuple[str, ...], ndim: int) -> tuple[str, ...]:
    """The logical names of a parameter's dimensions, from its leaf name and rank."""
    leaf = path[-1]
    if leaf == "kernel" and ndim == 4:
        return ("conv", "conv", "in", "out")
    if leaf == "kernel" and ndim == 2:
        return ("in", "out")
    if leaf == "embedding" and ndim == 2:
        return ("vocab", "dim")
    if leaf == "positional_embedding" and ndim == 2:  # the (1, D) query offset of the UNet's text pooling
        return ("norm", "dim")
    if ndim == 1:
        return ("norm",)
    raise ValueError(f"no logical axes for parameter {'/'.join(path)} of rank {ndim}.")


def _mesh_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical: Sequence[str], shape: Sequence[int], rules: Rules, mesh: Mesh) -> P:
    """Maps logical dimension names to a PartitionSpec; indivisible dimensions are replicated.

    A mesh axis is used at most once per array (the first dimension that claims it).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape):
        axes = table.get(name)
        if axes is None:
            spec.append(None)
            continue
        axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
        if used & set(axes_tuple) or size % _mesh_size(mesh, axes_tuple):
            spec.append(None)
            continue
        used |= set(axes_tuple)
        spec.append(axes)
    return P(*spec)


def param_specs(params: Any, rules: Rules, mesh: Mesh) -> Any:
    """A PartitionSpec for every leaf of a parameter tree (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params)
    specs = {path: logical_to_spec(param_logical_axes(path, len(x.shape)), x.shape, rules, mesh)
             for path, x in flat.items()}
    return traverse_util.unflatten_dict(specs)


def batch_spec(rules: Rules, ndim: int) -> P:
    """The PartitionSpec of a batch-major array: the batch dimension over the rules' "batch" axes."""
    return P(dict(rules).get("batch"), *([None] * (ndim - 1)))


def describe(params: Any, rules: Rules, mesh: Mesh) -> str:
    """A short summary: bytes per device, sharded and replicated parameter counts."""
    flat = traverse_util.flatten_dict(params)
    specs = traverse_util.flatten_dict(param_specs(params, rules, mesh))
    total = per_device = 0
    replicated_big = []
    for path, x in flat.items():
        n = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        shards = int(np.prod([_mesh_size(mesh, a) for a in specs[path] if a is not None]))
        total += n
        per_device += n // shards
        if shards == 1 and n >= 1 << 20:
            replicated_big.append("/".join(path))
    lines = [f"params {total / 2**20:.1f} MiB total, {per_device / 2**20:.1f} MiB per device on mesh "
             f"{dict(mesh.shape)}"]
    if replicated_big:
        lines.append(f"replicated (>= 1 MiB, indivisible): {', '.join(replicated_big)}")
    return "\n".join(lines)


def tree_shardings(tree: Any, rules: Rules, mesh: Mesh) -> Any:
    """`NamedSharding`s for any pytree holding parameter-like leaves (a train state, optimizer moments).

    A leaf's logical axes come from its last dict key (`kernel`, `bias`, ...),
    as in `param_specs`; scalars (step counters) are replicated.
    """

    def one(path, x):
        if not x.shape:
            return NamedSharding(mesh, P())
        name = next((str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey)), "")
        logical = param_logical_axes((name,), len(x.shape))
        return NamedSharding(mesh, logical_to_spec(logical, x.shape, rules, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)
