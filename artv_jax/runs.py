"""A training run for the tools that use one: `load` turns its checkpoint into components and EMA weights, and
`usage_errors` gives every command-line tool the same one-line error and exit status 2 on bad input."""

from __future__ import annotations

import contextlib
import sys


class UsageError(ValueError):
    """Bad command-line input: reported in one line."""


def load(workdir: str, step: int | None = None):
    """(components, params, config) of a checkpoint, with the EMA weights.

    `workdir`: a training run's workdir (local or gs://; `step` or the latest),
    its `checkpoints/` directory, or one step's directory.
    """
    import jax
    from flax import traverse_util

    from artv_jax import checkpoint, components as components_lib, config as config_lib, storage
    from artv_jax import train_step as ts

    if not workdir:
        raise UsageError("give --workdir, a training run's directory (with checkpoints/<step>/ in it).")
    workdir, step = checkpoint.locate(workdir, step)
    if not storage.is_dir(checkpoint.checkpoint_dir(workdir)):
        raise UsageError(f"no checkpoints in {workdir!r} (expected {checkpoint.checkpoint_dir(workdir)}/<step>/).")
    config_dict, _ = checkpoint.read_config(workdir)
    try:  # keys added since the checkpoint was written take their defaults: the behaviour it was trained with
        config = config_lib.validate(config_dict)
    except ValueError as e:
        raise UsageError(f"the config saved in {workdir!r}: {e}") from None
    comps, loaded = components_lib.build(config)
    saved = checkpoint.load_numpy(workdir, step, items=("ema_params",))
    if loaded is not None:  # a pretrained base: its frozen parts come from its directory
        _, frozen = ts.split_params(loaded, tuple(config.train.trainable))
    else:  # from scratch: the frozen parts (if any) were saved with the state
        frozen = checkpoint.load_frozen(workdir, saved["checkpoint_step"])
        # the frozen part by the same rule as training, so a path such as "artv/adapter" is checked leaf by leaf
        _, expected = ts.split_params(jax.eval_shape(comps.init, jax.random.PRNGKey(0)), tuple(config.train.trainable))
        flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
        missing = sorted(set(flat(expected)) - set(flat(frozen)))
        if missing:
            groups = sorted({k.split("/")[0] for k in missing})
            raise UsageError(f"checkpoint step {saved['checkpoint_step']} in {workdir!r} holds no parameters for "
                             f"{groups} ({len(missing)} arrays, e.g. {missing[0]!r}): they were frozen "
                             f"(train.trainable={tuple(config.train.trainable)}) and not saved.")
    return comps, ts.merge_params(saved["ema_params"], frozen), config


BAD_INPUT = (UsageError, FileNotFoundError, ValueError)  # what the tools report as bad input, not as a bug


@contextlib.contextmanager
def usage_errors(program: str, *also: type[Exception]):
    """Inside it, bad input ends the program with `<program>: error: <message>` (one line) on stderr, status 2.

        with runs.usage_errors("artv_jax.sample"):
            request = make_request(...)   # a bad flag: one line, not a traceback

    Bad input is `BAD_INPUT` (UsageError is a ValueError) and the exception
    types in `also`; whitespace in the message is collapsed to single spaces.
    """
    try:
        yield
    except BAD_INPUT + also as e:
        print(f"{program}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
