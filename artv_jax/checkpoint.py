"""Orbax checkpoints of a training run: state, data-iterator position and config, saved together.

    manager = make_manager(workdir, every=1000, max_to_keep=3)
    save(manager, step, state, data_state, config)          # async; `manager.wait_until_finished()` to block
    state, data_state = restore(manager, abstract_state)     # latest step, sharded as `abstract_state` says

Each step directory holds three items: `state` (the `TrainState` pytree,
restored straight into its shardings), `data` (the input iterator's position
as JSON) and `config` (the run's config as JSON, so a checkpoint directory
describes itself for sampling and export). A model trained from scratch with
frozen parts (say a text encoder frozen at init) adds a fourth, `frozen`:
those parameters exist nowhere else. Frozen parts of a pretrained model are
not saved; they are read again from the model's directory.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from artv_jax import storage

ITEMS = ("state", "data", "config", "frozen")


def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints`; the workdir may be local or a URL (gs://...)."""
    return storage.join(storage.resolve(workdir), "checkpoints")


def make_manager(workdir: str, every: int, max_to_keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager over `<workdir>/checkpoints` saving every `every` steps and keeping the last `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict, config_dict: dict,
         frozen: Any = None, force: bool = False) -> bool:
    """Saves if `step` is a save step (or `force`); returns whether a save started.

    `frozen`: the parameters outside the train state that no file holds (a
    scratch model's frozen parts), saved as the item `frozen`; None saves none.
    """
    items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                 config=ocp.args.JsonSave(config_dict))
    if frozen is not None:
        items["frozen"] = ocp.args.StandardSave(frozen)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


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
    path = storage.resolve(path)
    for directory in (path, storage.join(path, "checkpoints")):
        if storage.is_dir(storage.join(directory, "config")):
            step_dir = directory
            break
        steps = _steps(directory)
        if steps:
            step_dir = storage.join(directory, str(max(steps)))
            break
    else:
        raise FileNotFoundError(f"no checkpoint found at {path!r} (expected a workdir with checkpoints/<step>/).")
    config_file = _find_json(storage.join(step_dir, "config"))
    return json.loads(storage.read_text(config_file)), int(step_dir.rstrip("/").rsplit("/", 1)[-1])


def locate(path: str, step: int | None = None) -> tuple[str, int | None]:
    """(workdir, step) for a workdir, its `checkpoints/` directory or one step's directory `.../checkpoints/<N>`."""
    path = storage.resolve(path)
    head, _, last = path.rpartition("/")
    if last.isdigit() and head.endswith("/checkpoints") and storage.is_dir(storage.join(path, "config")):
        if step is not None and step != int(last):
            raise ValueError(f"{path!r} is the checkpoint of step {last}, but step {step} was asked for.")
        return head[: -len("/checkpoints")], int(last)
    if last == "checkpoints":
        return head, step
    return path, step


def _steps(directory: str) -> list[int]:
    """The finalised step directories (orbax writes `<step>.orbax-checkpoint-tmp-*` first, then renames)."""
    return [int(d) for d in storage.list_dir(directory) if d.isdigit() and storage.is_dir(storage.join(directory, d))]


def _find_json(item_dir: str) -> str:
    for name in storage.list_dir(item_dir):
        full = storage.join(item_dir, name)
        if not name.startswith("_") and not storage.is_dir(full):
            try:
                json.loads(storage.read_text(full))
                return full
            except (ValueError, UnicodeDecodeError):
                continue
    raise FileNotFoundError(f"no JSON config in {item_dir!r}.")


def load_numpy(workdir: str, step: int | None = None, items: tuple[str, ...] = ("params", "ema_params", "step")) -> dict:
    """The saved `TrainState` fields `items` as host NumPy trees, on any device count.

    For sampling, export and tests: no abstract state and no mesh are needed
    (the checkpoint may come from a pod). Returns `{item: tree}` plus
    `"checkpoint_step"`. Under `jax.distributed` the restore is collective:
    every process must call it (orbax waits for all of them).
    """
    directory, step = _existing_step(workdir, step)
    with _numpy_manager(directory) as manager:
        metadata = manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        missing = [k for k in items if k not in tree]
        if missing:
            raise KeyError(f"checkpoint step {step} has no {missing}; it holds {sorted(tree)}.")
        state = _restore_numpy(manager, step, "state", {k: tree[k] for k in items})
    return {**{k: state[k] for k in items}, "checkpoint_step": step}


def load_frozen(workdir: str, step: int | None = None) -> dict:
    """The saved `frozen` item (a scratch model's frozen parameters) as host NumPy; {} where the run saved none."""
    directory, step = _existing_step(workdir, step)
    if not storage.is_dir(storage.join(directory, str(step), "frozen")):
        return {}
    with _numpy_manager(directory) as manager:
        metadata = manager.item_metadata(step)["frozen"]
        return _restore_numpy(manager, step, "frozen", getattr(metadata, "tree", metadata))


def _existing_step(workdir: str, step: int | None) -> tuple[str, int]:
    directory = checkpoint_dir(workdir)
    steps = _steps(directory)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory!r}.")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {directory!r}; there are {sorted(steps)}.")
    return directory, step


def _numpy_manager(directory: str) -> ocp.CheckpointManager:
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "frozen": ocp.PyTreeCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, item_handlers=handlers)


def _restore_numpy(manager: ocp.CheckpointManager, step: int, item: str, wanted: Any) -> Any:
    """The subtree `wanted` (metadata leaves) of `item` as NumPy arrays on the host."""
    import numpy as np

    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    out = manager.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)}))
    return out[item]
