"""Orbax checkpoints of a training run: state, data-iterator position and config, saved together.

    manager = make_manager(workdir, every=1000, max_to_keep=3)
    save(manager, step, state, data_state, config)          # async; `manager.wait_until_finished()` to block
    state, data_state = restore(manager, abstract_state)     # latest step, sharded as `abstract_state` says

Each step directory holds three items: `state` (the `TrainState` pytree,
restored straight into its shardings), `data` (the input iterator's position
as JSON) and `config` (the run's config as JSON, so a checkpoint directory
describes itself for sampling and export).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, every: int, max_to_keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager over `<workdir>/checkpoints` saving every `every` steps and keeping the last `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict, config_dict: dict,
         force: bool = False) -> bool:
    """Saves if `step` is a save step (or `force`); returns whether a save started."""
    return manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config_dict),
    ), force=force)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s with shardings: what `restore` fills (from `jax.eval_shape` of the state)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, data_state) from `step` (default: the latest)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
    ))
    return out["state"], dict(out["data"])


def read_config(path: str) -> tuple[dict, int]:
    """(config dict, step) of a checkpoint: a workdir (latest step), its `checkpoints/` dir, or a step dir."""
    path = os.path.abspath(path)
    candidates = [path, os.path.join(path, "checkpoints")]
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "config", "metadata")) or os.path.isdir(os.path.join(directory, "config")):
            step_dir = directory
            break
        steps = _steps(directory)
        if steps:
            step_dir = os.path.join(directory, str(max(steps)))
            break
    else:
        raise FileNotFoundError(f"no checkpoint found at {path!r} (expected a workdir with checkpoints/<step>/).")
    config_file = _find_json(os.path.join(step_dir, "config"))
    with open(config_file) as f:
        return json.load(f), int(os.path.basename(step_dir))


def _steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d))]


def _find_json(item_dir: str) -> str:
    for name in sorted(os.listdir(item_dir)) if os.path.isdir(item_dir) else []:
        full = os.path.join(item_dir, name)
        if os.path.isfile(full) and not name.startswith("_"):
            try:
                with open(full) as f:
                    json.load(f)
                return full
            except (ValueError, UnicodeDecodeError):
                continue
    raise FileNotFoundError(f"no JSON config in {item_dir!r}.")
