"""The input pipeline: tuple sampling, seeded order, resume, per-host split (2 processes), global arrays (8 devices)."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.data import pipeline, shapes
from artv_jax.diffusion import sampling

REPO = Path(__file__).resolve().parents[1]
WORDS = {w: i + 1 for i, w in enumerate(shapes.VOCABULARY)}


def tokenize(text: str) -> np.ndarray:
    """Word ids of a shapes caption, zero-padded to 12."""
    ids = [WORDS[w] for w in text.split()]
    return np.array(ids + [0] * (12 - len(ids)), np.int32)


def shard(num_examples=40, process_index=0, process_count=1, split="train"):
    return pipeline.shapes_shard(split, 32, 16, num_examples=num_examples, process_index=process_index,
                                 process_count=process_count)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def run_python(code: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_sample_tuple_fits_the_clip():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        i, s = pipeline.sample_tuple(16, 2, (1, 4), rng)
        assert 1 <= s <= 4 and i - s >= 0 and i < 16
        seen.add((i, s))
    # Targets start at one stride: frame 1 (refs frame 0, frame 0) is trained, as the sampler starts with it.
    assert {s for _, s in seen} == {1, 2, 3, 4} and max(i for i, _ in seen) == 15 and min(i for i, _ in seen) == 1
    assert {s for _, s in (pipeline.sample_tuple(3, 2, (1, 8), rng) for _ in range(200))} == {1, 2}  # s <= 3 - 1
    with pytest.raises(ValueError, match="cannot hold"):
        pipeline.sample_tuple(3, 2, (3, 4), rng)
    with pytest.raises(ValueError, match="stride_range"):
        pipeline.sample_tuple(16, 1, (0, 2), rng)


def test_start_fraction_oversamples_the_first_step():
    draws = lambda f, seed: [pipeline.sample_tuple(16, 1, (1, 3), np.random.default_rng([seed, k]), f)
                             for k in range(3000)]
    # 0 draws nothing extra: the same tuples as a pipeline without the option.
    assert draws(0.0, 1) == [pipeline.sample_tuple(16, 1, (1, 3), np.random.default_rng([1, k])) for k in range(3000)]
    assert all(i == s for i, s in draws(1.0, 2))
    # P(i = s) = f + (1 - f) / (16 - s), averaged over s uniform in 1..3.
    uniform = np.mean([1 / (16 - s) for s in (1, 2, 3)])
    for f in (0.0, 0.4):
        got = np.mean([i == s for i, s in draws(f, 3)])
        assert abs(got - (f + (1 - f) * uniform)) < 0.03, (f, got)
    with pytest.raises(ValueError, match="start_fraction"):
        pipeline.sample_tuple(16, 1, (1, 1), np.random.default_rng(0), 1.5)


def test_bounce_steps_are_where_the_track_turns():
    # x = 1 moving left: frame 1 at x = 0, frame 2 turned back to x = 1; from 22 moving right: the first step.
    assert shapes.bounce_steps(1, 5, "left", 32, 16) == [2]
    assert shapes.bounce_steps(22, 5, "right", 32, 30) == [1, 23]
    assert shapes.bounce_steps(5, 5, "up", 32, 4) == []
    for direction in shapes.DIRECTIONS:
        for x in range(23):
            track = shapes.trajectory(x, x, direction, 32, 40)
            steps = np.concatenate([[shapes.VELOCITIES[direction]], np.diff(track, axis=0)])
            turns = [i for i in range(1, 40) if tuple(steps[i]) != tuple(steps[i - 1])]
            assert shapes.bounce_steps(x, x, direction, 32, 40) == turns


def test_bounce_fraction_puts_targets_on_bounces():
    def draws(f):
        out = []
        for k in range(400):
            ex = shapes.generate_example("train", k, 32, 16)
            t = pipeline.training_tuple(ex, rng=np.random.default_rng([5, k]), num_ref_frames=2, stride_range=(1, 1),
                                        tokenize=tokenize, bounce_fraction=f)
            out.append((int(t["frame_index"]), shapes.bounce_steps(ex["x"], ex["y"], ex["direction"], 32, 16)))
        return out

    plain, all_in = draws(0.0), draws(1.0)
    with_bounce = [b for _, b in all_in if b]
    assert 0.3 < len(with_bounce) / len(all_in) < 0.9  # most clips hold a bounce, not all
    assert all(i in b for i, b in all_in if b)  # every clip with a bounce is trained on one of its bounces
    assert [i for i, b in all_in if not b] == [i for i, b in plain if not b]  # the others keep their draw
    assert np.mean([i in b for i, b in plain]) < 0.1  # uniform targets meet few bounces
    ex = shapes.generate_example("train", 0, 32, 16)
    with pytest.raises(ValueError, match="bounce_fraction needs shapes-world clips at stride 1"):
        pipeline.training_tuple({"video": ex["video"], "caption": ex["caption"]}, rng=np.random.default_rng(0),
                                num_ref_frames=1, stride_range=(1, 1), tokenize=tokenize, bounce_fraction=1.0)
    with pytest.raises(ValueError, match="bounce_fraction must be in"):
        pipeline.TupleIterator(shard(), global_batch=4, tokenize=tokenize, bounce_fraction=2.0)


def test_reference_indices_repeat_frame_0_like_the_sampler():
    assert pipeline.reference_indices(7, 2, 3) == [1, 3, 5]
    assert pipeline.reference_indices(1, 1, 3) == [0, 0, 0]
    assert pipeline.reference_indices(2, 1, 3) == [0, 0, 1]
    assert pipeline.reference_indices(5, 4, 2) == [1, 1]  # at stride 4 this video starts at frame 1
    # The sampler's first window for R = 3 after one given frame is that frame three times, then it shifts.
    frames = jnp.arange(3.0)[:, None, None, None, None] * jnp.ones((3, 1, 2, 2, 1))
    sampler = types.SimpleNamespace(model=types.SimpleNamespace(config=types.SimpleNamespace(num_ref_frames=3)))
    window = sampling.initial_state(sampler, frames[:2]).window
    np.testing.assert_array_equal(window[0, 0, 0], [0.0, 0.0, 1.0])  # = reference_indices(2, 1, 3)


def test_training_tuple_takes_the_right_frames():
    video = np.arange(16, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    example = {"video": video, "caption": b"a red square moving up on a black background"}
    early = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        out = pipeline.training_tuple(example, rng=rng, num_ref_frames=2, stride_range=(1, 3), tokenize=tokenize)
        i, s = int(out["frame_index"]), int(out["stride"])
        assert (out["target"] == i).all() and (out["anchor"] == 0).all()
        assert out["refs"].shape == (2, 4, 4, 3)
        oldest = i - 2 * s if i >= 2 * s else i - s  # before the start: the first frame at stride s, repeated
        assert [int(r[0, 0, 0]) for r in out["refs"]] == [oldest, i - s]
        early += i < 2 * s
        np.testing.assert_array_equal(out["tokens"], tokenize(example["caption"].decode()))
    assert early > 0  # some targets have their oldest reference before the clip start


def test_batches_are_seeded_and_cover_each_epoch():
    kwargs = dict(global_batch=8, tokenize=tokenize, num_ref_frames=1, stride_range=(1, 3))
    with pipeline.TupleIterator(shard(), seed=5, **kwargs) as a, pipeline.TupleIterator(shard(), seed=5, **kwargs) as b:
        first, second = take(a, 10), take(b, 10)
    assert_same(first, second)
    with pipeline.TupleIterator(shard(), seed=6, **kwargs) as c:
        assert not np.array_equal(take(c, 1)[0]["example_id"], first[0]["example_id"])
    # 40 examples, batch 8: 5 steps an epoch, every example once per epoch, a new order each epoch.
    epoch0 = np.concatenate([b["example_id"] for b in first[:5]])
    epoch1 = np.concatenate([b["example_id"] for b in first[5:]])
    assert sorted(epoch0) == sorted(epoch1) == list(range(40))
    assert not np.array_equal(epoch0, epoch1)
    batch = first[0]
    assert batch["target"].shape == (8, 32, 32, 3) and batch["target"].dtype == np.uint8
    assert batch["refs"].shape == (8, 1, 32, 32, 3) and batch["tokens"].shape == (8, 12)


def test_batch_content_is_the_clip():
    with pipeline.TupleIterator(shard(), global_batch=4, tokenize=tokenize, num_ref_frames=2,
                                stride_range=(1, 2), seed=0) as it:
        batch = next(it)
    for j, g in enumerate(batch["example_id"]):
        ex = shapes.generate_example("train", int(g), 32, 16)
        i, s = int(batch["frame_index"][j]), int(batch["stride"][j])
        np.testing.assert_array_equal(batch["target"][j], ex["video"][i])
        np.testing.assert_array_equal(batch["refs"][j], ex["video"][[i - 2 * s if i >= 2 * s else i - s, i - s]])
        np.testing.assert_array_equal(batch["anchor"][j], ex["video"][0])
        np.testing.assert_array_equal(batch["tokens"][j], tokenize(ex["caption"]))
    with pipeline.TupleIterator(shard(), global_batch=4, tokenize=tokenize, stride_range=(1, 2), seed=0,
                                start_fraction=1.0) as it:
        batch = next(it)
    np.testing.assert_array_equal(batch["frame_index"], batch["stride"])  # the first step of every clip
    np.testing.assert_array_equal(batch["refs"][:, 0], batch["anchor"])
    with pytest.raises(ValueError, match="start_fraction"):  # at construction, not at the first batch
        pipeline.TupleIterator(shard(), global_batch=4, tokenize=tokenize, start_fraction=-0.1)


@pytest.mark.parametrize("num_threads", [1, 3])
def test_resume_from_state_gives_identical_batches(num_threads):
    kwargs = dict(global_batch=8, tokenize=tokenize, stride_range=(1, 4), seed=1, num_threads=num_threads)
    with pipeline.TupleIterator(shard(), **kwargs) as it:
        take(it, 3)
        state = it.get_state()
        after = take(it, 6)  # crosses the epoch boundary (5 steps per epoch)
    assert state == {"epoch": 0, "index": 24}
    with pipeline.TupleIterator(shard(), state=state, **kwargs) as resumed:
        assert_same(take(resumed, 6), after)
        resumed.set_state(state)  # and in place
        assert_same(take(resumed, 6), after)
    with pytest.raises(ValueError, match="does not fit"):
        pipeline.TupleIterator(shard(), state={"epoch": 0, "index": 3}, **kwargs)


def test_num_epochs_and_errors_reach_the_consumer():
    it = pipeline.TupleIterator(shard(16), global_batch=8, tokenize=tokenize, num_epochs=2)
    assert len(list(it)) == 4
    it = pipeline.TupleIterator(shard(16), global_batch=8, tokenize=lambda s: np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="int32"):
        next(it)
    it.close()
    with pytest.raises(ValueError, match="fewer than its batch"):
        pipeline.TupleIterator(shard(4), global_batch=8, tokenize=tokenize)


def test_host_blocks_partition_the_split():
    blocks = [pipeline.host_block(43, p, 4) for p in range(4)]
    assert blocks == [(0, 10), (10, 10), (20, 10), (30, 10)]
    with pytest.raises(ValueError, match="does not divide over 3 hosts"):
        pipeline.local_batch_size(16, 3)
    with pytest.raises(ValueError, match="does not divide over 2 hosts"):
        pipeline.TupleIterator(shard(40, 0, 2), global_batch=7, tokenize=tokenize)


def test_tfds_shard_equals_direct_shard(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    builder = shapes.builder("s32", data_dir=str(tmp_path), num_frames=16, num_train=12, num_test=3)
    builder.download_and_prepare()
    kwargs = dict(global_batch=4, tokenize=tokenize, num_ref_frames=2, stride_range=(1, 3), seed=3)
    for p in range(2):
        direct = pipeline.shapes_shard("train", 32, 16, num_examples=12, process_index=p, process_count=2)
        stored = pipeline.tfds_shard(builder, "train", process_index=p, process_count=2)
        assert (stored.start, stored.length) == (direct.start, direct.length) == (6 * p, 6)
        with pipeline.TupleIterator(direct, **kwargs) as a, pipeline.TupleIterator(stored, **kwargs) as b:
            assert_same(take(a, 4), take(b, 4))


TWO_HOSTS = """
    import json, sys
    import jax
    port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from artv_jax.data import pipeline, shapes

    def tokenize(text):
        return np.array([shapes.VOCABULARY.index(w) for w in text.split()], np.int32)

    def one_epoch():
        shard = pipeline.shapes_shard("test", 32, 4, num_examples=40)  # 20 per host: 5 batches of 4
        with pipeline.TupleIterator(shard, global_batch=8, tokenize=tokenize, stride_range=(1, 3), seed=7,
                                    num_epochs=1) as it:
            return list(it)

    first, second = one_epoch(), one_epoch()
    same = all(np.array_equal(x[k], y[k]) for x, y in zip(first, second) for k in x) and len(first) == len(second)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 1), ("data", "fsdp"))
    batch = pipeline.make_global_batch(first[0], NamedSharding(mesh, P(("data", "fsdp"))))
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(batch["example_id"])
    json.dump({"ids": [int(i) for b in first for i in b["example_id"]], "same": bool(same),
               "shape": list(batch["target"].shape), "global_sum": int(total),
               "local_sum": int(first[0]["example_id"].sum())}, open(out, "w"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_read_disjoint_parts_of_the_split(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(TWO_HOSTS), str(port), str(p),
                               str(tmp_path / f"{p}.json")], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env)
             for p in range(2)]
    logs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n\n".join(logs)
    hosts = [json.loads((tmp_path / f"{p}.json").read_text()) for p in range(2)]
    ids = [h["ids"] for h in hosts]
    assert all(len(i) == len(set(i)) == 20 for i in ids)  # one epoch: each example of the host's block once
    assert set(ids[0]).isdisjoint(ids[1])
    assert set(ids[0]) | set(ids[1]) == set(range(40))  # together: the whole split
    assert set(ids[0]) == set(range(20)) and ids[0] != sorted(ids[0])  # contiguous blocks, shuffled
    assert all(h["same"] for h in hosts)  # a fixed seed gives the same batches twice
    # Host batches of 4 became one global array of 8 rows holding both hosts' rows.
    assert hosts[0]["shape"] == hosts[1]["shape"] == [8, 32, 32, 3]
    assert hosts[0]["global_sum"] == hosts[1]["global_sum"] == hosts[0]["local_sum"] + hosts[1]["local_sum"]


EIGHT_DEVICES = """
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from artv_jax.data import pipeline, shapes

    assert jax.device_count() == 8
    tokenize = lambda text: np.array([shapes.VOCABULARY.index(w) for w in text.split()], np.int32)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    shard = pipeline.shapes_shard("train", 32, 16, num_examples=64)
    with pipeline.TupleIterator(shard, global_batch=16, tokenize=tokenize, num_ref_frames=2, stride_range=(1, 2)) as it:
        host = next(it)
    batch = pipeline.make_global_batch(host, sharding)
    assert batch["refs"].shape == (16, 2, 32, 32, 3) and batch["tokens"].shape == (16, 9)
    for key, arr in batch.items():
        assert arr.sharding == sharding, key
        assert len(arr.addressable_shards) == 8
        for s in arr.addressable_shards:
            assert s.data.shape[0] == 2
            np.testing.assert_array_equal(np.asarray(s.data), host[key][s.index])
        np.testing.assert_array_equal(np.asarray(arr), host[key])
    for bad in (12, 4):
        try:
            pipeline.check_global_batch(bad, sharding)
        except ValueError as e:
            assert "8 devices" in str(e), e
        else:
            raise AssertionError(f"global batch {bad} accepted on 8 devices")
    pipeline.check_global_batch(24, NamedSharding(mesh, P("data")))  # 4 devices on 'data' alone
    print("OK")
"""


def test_global_batch_on_eight_devices():
    proc = run_python(EIGHT_DEVICES, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                                          "JAX_PLATFORMS": "cpu"})
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and out.strip().endswith("OK"), err


def test_dropped_iterator_stops_its_thread():
    before = {t.ident for t in threading.enumerate()}
    it = pipeline.TupleIterator(shard(), global_batch=8, tokenize=tokenize, num_threads=2)
    next(it)
    del it
    gc.collect()
    deadline = time.time() + 5
    while {t.ident for t in threading.enumerate() if t.is_alive()} - before and time.time() < deadline:
        time.sleep(0.05)
    assert not {t.ident for t in threading.enumerate() if t.is_alive()} - before
