r"""Train ART·V: `python -m artv_jax.train --config=configs/shapes.py --workdir=DIR`.

One flat `train_and_evaluate(config, workdir)` in sections: distributed
set-up, mesh, model, sharded state, input, checkpoint restore, compiled step,
loop, final samples and evaluation. Everything scales from one CPU to a pod
without code changes: the mesh and the sharding rules come from the config.

Restarting with the same `--workdir` resumes from the newest checkpoint
that reads (state and input position; `checkpoint.restore`). SIGTERM saves a
checkpoint and exits cleanly; a non-finite loss stops the run with an error
and leaves the last checkpoint untouched (non-finite updates never reach the
parameters).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from artv_jax import checkpoint, components as components_lib, config as config_lib, sharding, storage
from artv_jax import train_step as ts
from artv_jax.data import pipeline

log = logging.getLogger("artv_jax.train")


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """`jax.distributed.initialize`: explicit on CPU/GPU clusters, automatic on TPU VM pods."""
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        jax.distributed.initialize()


class MetricWriter:
    """Process 0 writes metrics to `metrics.jsonl` and, where `tensorboard` is installed, TensorBoard events."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.events = None
        if not self.enabled:
            return
        self.file = storage.AppendLog(storage.join(workdir, "metrics.jsonl"))
        try:  # the pure-Python event writer of the tensorboard package; no TensorFlow needed
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.events = EventFileWriter(storage.join(workdir, "tensorboard"))
            self._pb = (event_pb2, summary_pb2)
        except ImportError:
            log.info("tensorboard not installed: metrics go to metrics.jsonl only.")

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write_line(json.dumps({"step": step, **metrics}))
        if self.events is not None:
            event_pb2, summary_pb2 = self._pb
            values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()]
            self.events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                  summary=summary_pb2.Summary(value=values)))
            self.events.flush()


def make_source(config, process_index=None, process_count=None) -> pipeline.HostShard:
    """This host's part of the training split."""
    data = config.data
    if data.name == "shapes":
        return pipeline.shapes_shard(data.split, data.size, data.num_frames,
                                     process_index=process_index, process_count=process_count)
    return pipeline.tfds_shard(data.tfds_name, data.split, data_dir=data.data_dir or None,
                               process_index=process_index, process_count=process_count)


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache: a resumed or repeated run skips the (minutes-long on CPU) compile.

    An empty path leaves JAX's setting alone.
    """
    if path and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def make_iterator(config, comps, process_index=None, process_count=None) -> pipeline.TupleIterator:
    """This host's resumable iterator of `global_batch // process_count` training tuples: R references and, for
    own rollouts, `objective.rollout_frames` frames more before them (`train_step.loss_fn`)."""
    return pipeline.TupleIterator(
        make_source(config, process_index, process_count), global_batch=config.train.global_batch,
        tokenize=comps.tokenize, num_ref_frames=comps.model.config.num_ref_frames + config.objective.rollout_frames,
        stride_range=tuple(config.data.stride_range), seed=config.seed,
        start_fraction=config.data.start_fraction, bounce_fraction=config.data.bounce_fraction)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains for `config.train.num_steps` steps (resuming from `workdir`), then samples and evaluates.

    Returns the final metrics (and the shapes-world scores for the shapes data).
    """
    config = config_lib.validate(config)  # every key present, checked once; ValueError names a bad key
    workdir = storage.resolve(workdir)  # local: absolute; gs://...: as given
    config = with_image_base(config, workdir)
    t_cfg = config.train
    enable_compilation_cache(config.compilation_cache)
    is_main = jax.process_index() == 0
    if is_main:
        storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    # --- Mesh: ('data', 'fsdp'); -1 takes the remaining devices.
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    rules = tuple(tuple(r) for r in config.mesh.rules)
    batch_sharding = jax.sharding.NamedSharding(mesh, sharding.batch_spec(rules, 1))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    pipeline.check_global_batch(t_cfg.global_batch, batch_sharding)

    # --- Model and parameters, created already sharded.
    dtype = jnp.dtype(t_cfg.compute_dtype)
    comps, loaded = components_lib.build(config, dtype=dtype)
    tx = ts.make_optimizer(config)
    key = jax.random.PRNGKey(config.seed)
    init_key, step_key, sample_key = jax.random.split(key, 3)
    trainable_paths = tuple(t_cfg.trainable)
    all_shapes = jax.eval_shape(comps.init, init_key) if loaded is None else loaded
    trainable_shapes, frozen_shapes = ts.split_params(all_shapes, trainable_paths)
    state_shapes = jax.eval_shape(lambda p: ts.TrainState.create(p, tx), trainable_shapes)
    state_sh = sharding.tree_shardings(state_shapes, rules, mesh)
    frozen_sh = sharding.tree_shardings(frozen_shapes, rules, mesh)
    if loaded is None:
        def init_state(k):
            trainable, frozen = ts.split_params(comps.init(k), trainable_paths)
            return ts.TrainState.create(trainable, tx), frozen

        state, frozen = jax.jit(init_state, out_shardings=(state_sh, frozen_sh))(init_key)
    else:
        trainable, frozen = ts.split_params(loaded, trainable_paths)
        trainable = jax.device_put(trainable, sharding.tree_shardings(trainable, rules, mesh))
        state = jax.jit(lambda p: ts.TrainState.create(p, tx), out_shardings=state_sh)(trainable)
        frozen = jax.device_put(frozen, frozen_sh)
    if is_main:
        log.info(sharding.describe(all_shapes, rules, mesh))

    # --- Input: this host's slice, seeded, resumable.
    iterator = make_iterator(config, comps)

    # --- Checkpoints: resume if there is one.
    ckpt = config.checkpoint
    manager = checkpoint.make_manager(workdir, ckpt.every, ckpt.max_to_keep, ckpt.async_save)
    config_dict = json.loads(config.to_json_best_effort())
    # A scratch model's frozen parts (say a text encoder frozen at init) exist only in memory: saved with the state.
    frozen_to_save = frozen if loaded is None and jax.tree.leaves(frozen) else None
    if manager.latest_step() is not None:
        state, data_state = checkpoint.restore(manager, checkpoint.abstract_like(state_shapes, state_sh))
        iterator.set_state(data_state)
        log.info("resumed from step %d", int(state.step))
    start_step = int(jax.device_get(state.step))

    # --- The step: jitted with explicit shardings, compiled once up front.
    keys = ("target", "refs", "anchor", "tokens")
    if config.objective.start_t_logit_normal:
        keys += ("frame_index", "stride")  # the loss finds the clips' first steps by them
    batch_shapes = {k: jax.ShapeDtypeStruct((t_cfg.global_batch, *v.shape[1:]), v.dtype, sharding=batch_sharding)
                    for k, v in _example_batch(iterator, keys).items()}
    step_fn = jax.jit(
        ts.make_train_step(comps, config, tx),
        in_shardings=(state_sh, frozen_sh, {k: batch_sharding for k in keys}, replicated),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
    t0 = time.time()
    compiled = step_fn.lower(state, frozen, batch_shapes, step_key).compile()
    memory = compiled.memory_analysis()
    if is_main:
        log.info("compiled the train step in %.1f s%s", time.time() - t0, _memory_line(memory))

    # --- Loop.
    writer = MetricWriter(workdir)
    stop = _PreemptionFlag()
    progress = _progress(start_step, t_cfg.num_steps, enabled=is_main and config.progress)
    last_log, last_log_step = time.time(), start_step
    step = start_step
    last_metrics = {}
    t_train = time.time()
    try:
        for step in range(start_step + 1, t_cfg.num_steps + 1):
            host_batch = next(iterator)
            batch = pipeline.make_global_batch({k: host_batch[k] for k in keys}, batch_sharding)
            state, metrics = compiled(state, frozen, batch, step_key)
            progress.update(1)
            is_log = step % config.log_every == 0 or step == t_cfg.num_steps
            is_save = step % ckpt.every == 0 or step == t_cfg.num_steps
            if is_log or is_save:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if metrics["nonfinite"] > 0:
                    raise FloatingPointError(
                        f"non-finite loss or gradients in {int(metrics['nonfinite'])} step(s) up to step {step}; "
                        f"those updates were skipped and the last checkpoint "
                        f"(step {manager.latest_step()}) is intact. Lower train.learning_rate or check the data.")
                now = time.time()
                metrics["steps_per_s"] = (step - last_log_step) / max(now - last_log, 1e-9)
                last_log, last_log_step = now, step
                writer.write(step, metrics)
                last_metrics = metrics
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", mask=f"{metrics['mask_mean']:.2f}")
            if is_save:
                checkpoint.save(manager, step, state, iterator.get_state(), config_dict, frozen_to_save, force=True)
            if config.sample.every and step % config.sample.every == 0 and step < t_cfg.num_steps:
                params = host_ema_params(state, frozen)
                if is_main:
                    _write_samples(comps, params, config, workdir, sample_key, f"step_{step}")
            if stop.should_stop(step):
                if not is_save:  # this step's checkpoint may already be written
                    checkpoint.save(manager, step, state, iterator.get_state(), config_dict, frozen_to_save, force=True)
                manager.wait_until_finished()
                log.info("preempted: saved step %d and stopped.", step)
                return {"preempted_at": step, "start_step": start_step}
    finally:  # on errors too: a save in flight completes, so the last good checkpoint is whole
        progress.close()
        iterator.close()
        stop.restore()
        manager.wait_until_finished()

    # --- End of run: samples from the EMA weights, and the shapes-world scores.
    results = {"step": step, "start_step": start_step, "train_seconds": round(time.time() - t_train, 1),
               **{k: last_metrics[k] for k in ("loss", "loss_raw", "mask_mean") if k in last_metrics}}
    params = host_ema_params(state, frozen)  # every process takes part in the gather
    if is_main and config.sample.at_end:
        t0 = time.time()
        _write_samples(comps, params, config, workdir, sample_key, "final")
        results["sample_seconds"] = round(time.time() - t0, 1)
        if config.data.name == "shapes" and config.eval.num_videos > 0:
            from artv_jax import evaluate  # shapes runs only

            t0 = time.time()
            results.update(evaluate.text_to_video_scores(comps, params, config, sample_key))
            results["eval_seconds"] = round(time.time() - t0, 1)
            storage.write_text(storage.join(workdir, "eval.json"), json.dumps(results, indent=2))
            log.info("shapes-world scores: %s", json.dumps(results))
    return results


def with_image_base(config, workdir: str):
    """Stage 1 of a scratch model with `image_base.num_steps` > 0: the config that starts ART·V from
    `<workdir>/image_base` (`model.pretrained`), building the image base there first unless it exists.
    Other configs come back as they are."""
    if not config.image_base.num_steps or config.model.pretrained:
        return config
    base = storage.join(workdir, "image_base")
    if storage.is_remote(base):
        raise ValueError(f"the image base is built on a local disk; --workdir {workdir!r} is remote.")
    if not os.path.isdir(base):
        from artv_jax import image_base

        log.info("stage 1: training the image base (%d steps) into %s", config.image_base.num_steps, base)
        image_base.train(config, base, progress=config.progress)
    else:
        log.info("stage 1: the image base in %s exists; ART·V starts from it", base)
    config = config.copy_and_resolve_references()  # unlocked copy
    config.model.pretrained = base
    return config_lib.validate(config)


def host_ema_params(state: ts.TrainState, frozen: dict) -> dict:
    """The full parameter tree with the EMA of the trainable part, gathered to host NumPy on every process.

    Sampling then runs on one process's local device, without collectives.
    """
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(ts.merge_params(state.ema_params, frozen), tiled=True)


def _write_samples(comps, params, config, workdir, key, name: str) -> None:
    from artv_jax import generate, video_io

    s = config.sample
    sampler = generate.make_sampler(comps, s, config.model)
    videos = generate.generate(comps, params, sampler, list(s.prompts), s.num_frames, key)
    grid = np.concatenate(list(videos), axis=2)  # videos side by side
    for ext in ("gif", "mp4"):
        with storage.local_file(storage.join(workdir, "samples", f"{name}.{ext}")) as path:
            if ext == "gif":
                video_io.write_gif(path, grid, fps=8, scale=4 if comps.frame_size <= 64 else 1)
            else:
                video_io.write_mp4(path, grid, fps=8)
    storage.write_text(storage.join(workdir, "samples", f"{name}.txt"), "\n".join(s.prompts) + "\n")


def _example_batch(iterator, keys) -> dict:
    """Shapes/dtypes of one host batch, without consuming the iterator's position."""
    state = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(state)
    return {k: batch[k] for k in keys}


def _memory_line(memory) -> str:
    if memory is None:
        return ""
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
             - memory.alias_size_in_bytes)
    return (f"; per-device memory {total / 2**20:.1f} MiB (arguments {memory.argument_size_in_bytes / 2**20:.1f}, "
            f"temporaries {memory.temp_size_in_bytes / 2**20:.1f})")


class _PreemptionFlag:
    """SIGTERM -> save and stop. Multi-host runs agree on the step through JAX's preemption sync."""

    def __init__(self):
        self.flag = False
        self.previous = None
        if jax.process_count() == 1:
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.flag = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="training", disable=not enabled, dynamic_ncols=True)


def main(argv):
    del argv
    from absl import flags

    from absl import logging as absl_logging

    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("artv_jax").setLevel(logging.INFO)  # orbax and absl stay at WARNING
    from artv_jax import runs

    with runs.usage_errors("artv_jax.train"):  # bad input: one line, before anything starts
        config = config_lib.validate(FLAGS.config)
        runs.check_training(config, FLAGS.workdir)  # workdir, pretrained model, data: before the mesh
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    with runs.usage_errors("artv_jax.train"):
        runs.check_mesh(config)
    try:
        train_and_evaluate(config, FLAGS.workdir)
    except checkpoint.UnreadableCheckpoint as e:  # no checkpoint of the run reads; none was moved
        runs.fail("artv_jax.train", e)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/shapes.py", "Training config (a python file with get_config()).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", "workdirs/shapes", "Checkpoints, metrics, samples; an existing one is resumed.")
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process runs off TPU).")
    flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


if __name__ == "__main__":
    from artv_jax import runs

    runs.run("artv_jax.train", main, _define_flags)
