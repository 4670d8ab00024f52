"""A training run for the tools that use one: `load` turns its checkpoint into components and EMA weights,
`check_training` and `check_mesh` check a run's inputs before it starts, and `usage_errors` and `run` give
every command-line tool the same one-line error and exit status 2 on bad input."""

from __future__ import annotations

import contextlib
import sys
from typing import NoReturn


class UsageError(ValueError):
    """Bad command-line input: reported in one line."""


def load(workdir: str, step: int | None = None):
    """(components, params, config) of a checkpoint, with the EMA weights.

    `workdir`: a training run's workdir (local or gs://; `step` or the latest),
    its `checkpoints/` directory, or one step's directory.
    """
    from artv_jax import checkpoint, storage

    if not workdir:
        raise UsageError("give --workdir, a training run's directory (with checkpoints/<step>/ in it).")
    workdir, step = checkpoint.locate(workdir, step)
    if not storage.is_dir(checkpoint.checkpoint_dir(workdir)):
        raise UsageError(f"no checkpoints in {workdir!r} (expected {checkpoint.checkpoint_dir(workdir)}/<step>/).")
    try:
        return _load(workdir, step)
    except checkpoint.UnreadableCheckpoint as e:  # a file cut short or lost: name the steps there are instead
        others = [s for s in checkpoint.list_steps(workdir) if s not in e.steps]
        hint = (f"the run's other checkpoints are steps {others} (choose one with --step)" if others else
                "it is the run's only checkpoint")
        raise UsageError(f"{str(e).rstrip('.')}; {hint}.") from None


def _load(workdir: str, step: int | None):
    import jax
    from flax import traverse_util

    from artv_jax import checkpoint, components as components_lib, config as config_lib
    from artv_jax import train_step as ts

    config_dict, step = checkpoint.read_config(workdir, step)
    try:  # keys added since the checkpoint was written take their defaults: the behaviour it was trained with
        config = config_lib.validate(config_dict)
    except ValueError as e:
        raise UsageError(f"the config saved in {workdir!r}: {e}") from None
    comps, loaded = components_lib.build(config)
    saved = checkpoint.load_numpy(workdir, step, items=("ema_params",))
    if loaded is not None:  # a pretrained base: its frozen parts come from its directory
        _, frozen = ts.split_params(loaded, tuple(config.train.trainable))
    else:  # from scratch: the frozen parts (if any) were saved with the state
        frozen = checkpoint.load_frozen(workdir, step)
        # the frozen part by the same rule as training, so a path such as "artv/adapter" is checked leaf by leaf
        _, expected = ts.split_params(jax.eval_shape(comps.init, jax.random.PRNGKey(0)), tuple(config.train.trainable))
        flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
        missing = sorted(set(flat(expected)) - set(flat(frozen)))
        if missing:
            groups = sorted({k.split("/")[0] for k in missing})
            raise UsageError(f"checkpoint step {step} in {workdir!r} holds no parameters for "
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
        fail(program, e)


def fail(program: str, message) -> NoReturn:
    """Ends the program with `<program>: error: <message>` on one stderr line and exit status 2."""
    print(f"{program}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def run(program: str, main, define_flags) -> None:
    """`absl.app.run(main)` after `define_flags()`, with bad flags reported as `usage_errors` reports bad input.

        if __name__ == "__main__":
            runs.run("artv_jax.train", main, _define_flags)

    absl alone prints "FATAL Flags parsing error" and exits 1; a mistyped
    config override (`--config.train.num_stepz=3`) or a config file that does
    not load escapes ml_collections as a traceback. Here each is one line
    (ml_collections' "Did you mean" included) and exit status 2. absl logs
    from WARNING up unless `--verbosity` says otherwise.
    """
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    with _flag_errors(program, sys.argv):
        define_flags()  # ml_collections reads the `--config.*` overrides from sys.argv here

    def parse(argv):
        with _flag_errors(program, argv):
            argv = flags.FLAGS(argv)
        for name in list(flags.FLAGS):
            try:
                filename = config_flags.get_config_filename(flags.FLAGS[name])
            except TypeError:  # not a config flag
                continue
            try:  # a config file that did not load stands in as an object that raises on any use
                flags.FLAGS[name].value.keys()
            except OSError as e:
                fail(program, f"--{name}={filename}: the config file does not load: {_last_line(e.__cause__ or e)}")
        if not flags.FLAGS["verbosity"].present:  # orbax's INFO lines would bury the tool's own output
            absl_logging.set_verbosity(absl_logging.WARNING)
        return argv

    app.run(main, flags_parser=parse)


@contextlib.contextmanager
def _flag_errors(program: str, argv):
    from absl import flags

    try:
        yield
    except flags.Error as e:
        message = str(e)
        if "Error whilst parsing config file" in message:  # get_config raised: the traceback's last line says why
            message = message.split("Error whilst parsing config file")[0] + _last_line(message)
        fail(program, message)
    except (AttributeError, KeyError) as e:  # ml_collections: an override's path names no config key
        message = e
        while isinstance(message, BaseException) and message.args:
            message = message.args[0]
        key, _, suggestion = str(message).partition("\n")
        key = key.strip("'\"")
        override = next((a for a in argv[1:] if a.startswith("--config") and
                         key in a.split("=", 1)[0].split(".")[1:]), None)
        if override is None:  # not an override's error: a bug
            raise
        fail(program, f"{override}: the config has no key {key!r}. {suggestion}")


def _last_line(error) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def check_training(config, workdir: str) -> None:
    """UsageError naming the first bad input of a training run, before any device work or model loading.

    `--workdir` must be a directory or nothing yet; WebVid data needs
    `model.pretrained`, which must be a directory with `unet/` in it; a
    scratch model's vocabulary must hold every word of `sample.prompts`; a
    TFDS data set must be prepared where `data.data_dir` says.
    """
    import os

    from artv_jax import storage

    if not workdir:
        raise UsageError("give --workdir, the run's directory (new, or a run to resume).")
    if storage.exists(workdir) and not storage.is_dir(workdir):
        raise UsageError(f"--workdir={workdir!r} is a file; give a directory (new, or a run to resume).")
    pretrained = config.model.pretrained
    if config.image_base.num_steps and not pretrained and storage.is_remote(workdir):
        raise UsageError(f"stage 1 (image_base.num_steps > 0) builds the image base on a local disk; --workdir="
                         f"{workdir!r} is remote: build it in a local workdir, or start from it with "
                         f"--config.model.pretrained.")
    if config.data.name == "webvid" and not pretrained:
        raise UsageError("WebVid runs start from Stable Diffusion: set --config.model.pretrained to a local "
                         "diffusers SD 1.x/2.x directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                         "scheduler/).")
    if pretrained and not os.path.isdir(os.path.join(pretrained, "unet")):
        what = "does not exist" if not os.path.exists(pretrained) else "has no unet/"
        raise UsageError(f"--config.model.pretrained={pretrained!r} {what}: give a diffusers text-to-image "
                         f"directory (Stable Diffusion 1.x/2.x: model_index.json, unet/, vae/, text_encoder/, "
                         f"tokenizer/, scheduler/).")
    if not pretrained:  # a scratch model's word tokenizer: the prompts sampled during and after training must fit it
        from artv_jax.tokenizers import WordTokenizer

        tokenize = WordTokenizer(tuple(config.model.text.vocabulary), max_length=config.model.text.max_length)
        for prompt in config.sample.prompts:
            try:
                tokenize(prompt)
            except ValueError as e:
                raise UsageError(f"config key 'sample.prompts': {e}") from None
    if config.data.name != "shapes":
        from artv_jax.data import pipeline

        try:  # opens the split's index only; each host opens its own part once training starts
            pipeline.tfds_shard(config.data.tfds_name, config.data.split, data_dir=config.data.data_dir or None,
                                process_index=0, process_count=1)
        except ValueError as e:
            raise UsageError(f"{str(e).rstrip('.')}; --config.data.data_dir={config.data.data_dir!r} must hold "
                             f"the prepared data set (docs/data.md).") from None


def check_mesh(config) -> None:
    """UsageError unless this run's devices fill `mesh.shape` and the global batch divides over them."""
    import jax

    from artv_jax import sharding
    from artv_jax.data import pipeline

    try:
        mesh = sharding.make_mesh(tuple(config.mesh.shape))
    except ValueError as e:
        raise UsageError(f"{str(e).rstrip('.')}: set --config.mesh.shape=(data,fsdp) to fit them, e.g. "
                         f"--config.mesh.shape='(-1,1)' (all {jax.device_count()} for data parallelism).") from None
    rules = tuple(tuple(r) for r in config.mesh.rules)
    try:
        pipeline.check_global_batch(config.train.global_batch,
                                    jax.sharding.NamedSharding(mesh, sharding.batch_spec(rules, 1)))
    except ValueError as e:
        raise UsageError(f"{str(e).rstrip('.')}: set --config.train.global_batch (or --config.mesh.shape) to "
                         f"fit.") from None
