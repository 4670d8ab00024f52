"""Orbax checkpoints of a training run: state, data-iterator position and config, saved together.

    manager = make_manager(workdir, every=1000, max_to_keep=3)
    save(manager, step, state, data_state, config)          # async; `manager.wait_until_finished()` to block
    state, data_state = restore(manager, abstract_state)     # newest step that reads, sharded as `abstract_state` says

Each step directory holds three items: `state` (the `TrainState` pytree,
restored straight into its shardings), `data` (the input iterator's position
as JSON) and `config` (the run's config as JSON, so a checkpoint directory
describes itself for sampling and export). A model trained from scratch with
frozen parts (say a text encoder frozen at init) adds a fourth, `frozen`:
those parameters exist nowhere else. Frozen parts of a pretrained model are
not saved; they are read again from the model's directory.

A step directory that does not read (a file cut short or lost: a disk
error, a copy stopped half-way) raises `UnreadableCheckpoint`, one line
naming the step, its directory and the first cause. Resuming skips it for
the newest step that reads and moves it, unchanged, to
`<workdir>/checkpoints_damaged/<step>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from artv_jax import storage

ITEMS = ("state", "data", "config", "frozen")
DAMAGED = "checkpoints_damaged"  # beside checkpoints/: where resuming moves steps that do not read

log = logging.getLogger("artv_jax.checkpoint")


class UnreadableCheckpoint(ValueError):
    """Checkpoint steps that are there but do not read: one line naming each step, its directory and first cause."""

    def __init__(self, message: str, steps: tuple[int, ...]):
        super().__init__(message)
        self.steps = steps


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
    """Restores (state, data_state) from `step`, by default from the newest step that reads.

    Newer steps that do not read are each reported in one log line and moved,
    unchanged, to `<workdir>/checkpoints_damaged/<step>`: out of the manager's
    sight, so the run can write those steps again and never deletes them. If
    no step reads, `UnreadableCheckpoint` names them all and nothing moves.
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    unreadable = []
    for s in steps:
        try:
            with _reading(manager.directory, s):
                out = manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ))
        except UnreadableCheckpoint as e:
            if step is not None:
                raise
            unreadable.append(e)
            continue
        for e in unreadable:
            _set_aside(manager, e.steps[0], str(e), s)
        if unreadable:
            manager.reload()
        return out["state"], dict(out["data"])
    if len(unreadable) == 1:
        raise unreadable[0]
    raise UnreadableCheckpoint(f"no checkpoint in {manager.directory} reads: " + "; ".join(map(str, unreadable)),
                               tuple(s for e in unreadable for s in e.steps))


def read_config(path: str, step: int | None = None) -> tuple[dict, int]:
    """(config dict, step) of a checkpoint: a workdir or its `checkpoints/` dir (`step` or the latest), or a step dir."""
    path = storage.resolve(path)
    for directory in (path, storage.join(path, "checkpoints")):
        if storage.is_dir(storage.join(directory, "config")):
            step_dir = directory
            break
        steps = _steps(directory)
        if steps:
            step_dir = storage.join(directory, str(max(steps) if step is None else step))
            break
    else:
        raise FileNotFoundError(f"no checkpoint found at {path!r} (expected a workdir with checkpoints/<step>/).")
    parent, _, name = step_dir.rstrip("/").rpartition("/")
    if not storage.is_dir(step_dir):
        raise FileNotFoundError(f"no checkpoint for step {name} in {parent!r}; there are {sorted(_steps(parent))}.")
    with _reading(parent, int(name)):
        config_file = _find_json(storage.join(step_dir, "config"))
        return json.loads(storage.read_text(config_file)), int(name)


def list_steps(workdir: str) -> list[int]:
    """The steps of a run's finalised checkpoints, oldest first."""
    return sorted(_steps(checkpoint_dir(workdir)))


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
    with _reading(directory, step), _numpy_manager(directory) as manager:
        tree = _item_tree(manager, step, "state")
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
    with _reading(directory, step), _numpy_manager(directory) as manager:
        return _restore_numpy(manager, step, "frozen", _item_tree(manager, step, "frozen"))


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


def _item_tree(manager: ocp.CheckpointManager, step: int, item: str) -> dict:
    """The metadata tree of a saved item; FileNotFoundError when its metadata is gone."""
    metadata = manager.item_metadata(step)[item]
    if metadata is None:
        raise FileNotFoundError(f"no metadata for the item {item!r} (its _METADATA file is missing).")
    return getattr(metadata, "tree", metadata)


def _restore_numpy(manager: ocp.CheckpointManager, step: int, item: str, wanted: Any) -> Any:
    """The subtree `wanted` (metadata leaves) of `item` as NumPy arrays on the host."""
    import numpy as np

    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    out = manager.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)}))
    return out[item]


# ----------------------------------------------------------------------------- steps that do not read

# A step that does not read fails with tensorstore's ValueError (OUT_OF_RANGE: a file cut short; NOT_FOUND,
# FAILED_PRECONDITION: one lost), a FileNotFoundError or JSONDecodeError (orbax's own files), or orbax's bare
# Exception wrapping one of those. A status that means "try again later" is no damage: it is raised as it comes
# (a resumed run would otherwise skip a good step because the bucket was briefly unreachable).
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED",
              "UNAUTHENTICATED")


@contextlib.contextmanager
def _reading(directory, step: int):
    """Turns a failed read of checkpoint `step` in `directory` into `UnreadableCheckpoint`; other errors pass."""
    try:
        yield
    except UnreadableCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 — orbax raises a bare Exception around tensorstore's error
        _quiet_after_failed_read()
        cause = _root_cause(e)
        status = re.match(r"[A-Z_]+(?=: )", str(cause))
        unreadable = ((type(e) is Exception or isinstance(e, (ValueError, OSError)))
                      and isinstance(cause, (ValueError, OSError))
                      and not isinstance(cause, (ConnectionError, TimeoutError, PermissionError))
                      and not (status and status.group() in _TRANSIENT))
        if not unreadable:
            raise
        raise UnreadableCheckpoint(f"checkpoint step {step} ({storage.join(str(directory), str(step))}) does not "
                                   f"read: {_first_line(cause)}", (step,)) from e


def _root_cause(e: BaseException) -> BaseException:
    """The first error of a chain, as a traceback shows it (`raise ... from None` ends the chain)."""
    while True:
        below = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if below is None:
            return e
        e = below


def _first_line(e: BaseException) -> str:
    """An error's first line without tensorstore's JSON spec, led by its status ("OUT_OF_RANGE: ...") or type."""
    lines = str(e).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec=")[0] if lines else ""
    return text if re.match(r"[A-Z_]+: ", text) else f"{type(e).__name__}: {text}"


def _set_aside(manager: ocp.CheckpointManager, step: int, reason: str, resumed_from: int) -> None:
    """Moves a step that does not read, unchanged, to `<workdir>/checkpoints_damaged/<step>` (process 0 moves it)."""
    if jax.process_index() == 0:
        source = storage.join(str(manager.directory), str(step))
        base = storage.join(str(manager.directory).rstrip("/").rpartition("/")[0], DAMAGED, str(step))
        target, n = base, 1
        while storage.exists(target):  # that step was set aside before: keep both
            target, n = f"{base}.{n}", n + 1
        storage.move(source, target)
        log.warning("%s. Moved it, unchanged, to %s; resuming from step %d.", reason.rstrip("."), target,
                    resumed_from)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"artv_jax.checkpoint: set aside step {step}")


def _quiet_after_failed_read() -> None:
    """Keeps the one real error readable: once a read fails, tensorstore's other reads still finish and call back
    into orbax's event loop, closed by then. Each such call prints "RuntimeError: Event loop is closed" as an
    unraisable exception or logs "exception was never retrieved"; from here on those two are dropped."""
    hook = sys.unraisablehook
    if getattr(hook, "artv_quiet", False):
        return

    def quiet(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            hook(unraisable)

    quiet.artv_quiet = True
    sys.unraisablehook = quiet
    logging.getLogger("asyncio").addFilter(lambda record: "exception was never retrieved" not in record.getMessage())
