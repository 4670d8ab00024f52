"""One training run of a tiny shapes-world ART·V, in its own process (for tests/test_train.py).

    python tests/train_worker.py --workdir=W --devices=8 --mesh=4,2 --num_steps=3 --out=params.npz

Runs in a fresh process because the simulated device count must be set
before JAX is imported. Writes the trainable parameters of the last
checkpoint (process 0) to `--out` as a flat .npz, and prints the run's
result dict as one JSON line starting with "RESULT ".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def tiny_config(num_steps: int, checkpoint_every: int, global_batch: int = 8, mesh=(-1, 1)):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from configs import shapes as shapes_config

    c = shapes_config.get_config()
    c.model.unet.update(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, num_heads=2,
                        norm_num_groups=8, addition_embed_type="text", addition_embed_type_num_heads=2,
                        resnet_time_scale_shift="scale_shift")  # the default's text pooling and scale-shift ResNets
    c.model.text.update(hidden_size=32, num_layers=1, num_heads=2, max_length=12)
    c.train.trainable = ("artv", "text")  # the default freezes the encoder; these runs cover training it too
    c.image_base.num_steps = 0  # the trainer's own machinery, on a scratch model (tests/test_image_base.py: stage 1)
    c.train.num_steps = num_steps
    c.train.global_batch = global_batch
    c.train.warmup_steps = 2
    c.mesh.shape = tuple(mesh)
    c.checkpoint.every = checkpoint_every
    c.log_every = 1
    c.progress = False
    c.sample.at_end = False
    c.eval.num_videos = 0
    return c


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default="")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--mesh", default="-1,1")
    parser.add_argument("--num_steps", type=int, default=3)
    parser.add_argument("--checkpoint_every", type=int, default=1000)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--emulate_hosts", type=int, default=1,
                        help="one process reading the data exactly as this many hosts would together")
    parser.add_argument("--learning_rate", type=float, default=0.0, help="override train.learning_rate")
    parser.add_argument("--step_sleep", type=float, default=0.0, help="seconds to wait before each batch")
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()

    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax
    import numpy as np
    from flax import traverse_util

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("artv_jax").setLevel(logging.INFO)
    from artv_jax import checkpoint, train

    config = tiny_config(args.num_steps, args.checkpoint_every, args.global_batch,
                         tuple(int(x) for x in args.mesh.split(",")))
    if args.learning_rate:
        config.train.learning_rate = args.learning_rate
    make_iterator = train.make_iterator

    def patched_iterator(config, comps, process_index=None, process_count=None):
        if args.emulate_hosts > 1:
            it = _Concat([make_iterator(config, comps, i, args.emulate_hosts) for i in range(args.emulate_hosts)])
        else:
            it = make_iterator(config, comps, process_index, process_count)
        return _Slow(it, args.step_sleep) if args.step_sleep else it

    train.make_iterator = patched_iterator
    results = train.train_and_evaluate(config, args.workdir)
    if args.out or jax.process_count() > 1:  # a restore is collective: every process joins; process 0 writes
        saved = checkpoint.load_numpy(args.workdir, items=("params", "step"))
        results["checkpoint_step"] = int(saved["step"])
        if args.out and jax.process_index() == 0:
            np.savez(args.out, **traverse_util.flatten_dict(saved["params"], sep="/"))
    print("RESULT " + json.dumps(results), flush=True)


class _Concat:
    """The global batch that `len(parts)` hosts would assemble, read by one process."""

    def __init__(self, parts):
        self.parts = parts

    def __next__(self):
        import numpy as np

        batches = [next(p) for p in self.parts]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self):
        return {"parts": [p.get_state() for p in self.parts]}

    def set_state(self, state):
        for p, s in zip(self.parts, state["parts"]):
            p.set_state(s)

    def close(self):
        for p in self.parts:
            p.close()


class _Slow:
    """An iterator that waits before each batch, so a test can interrupt a run mid-way."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def close(self):
        self.inner.close()


if __name__ == "__main__":
    main()
