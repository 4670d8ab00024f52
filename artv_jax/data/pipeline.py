"""The input pipeline: host-sharded, seeded, resumable batches of ART·V training tuples.

One training tuple, drawn from one clip with a random frame stride `s`:
target frame `i >= s`, its `R` previous frames `i - s*R, ..., i - s` (oldest
first; those before the clip's start are its first frame at that stride,
`i mod s`, repeated: the window the sampler starts a video with),
the clip's frame 0 (the anchor), and the caption's token ids. Text dropout is
not done here (the train step does it).

    shard = pipeline.shapes_shard("train")      # or tfds_shard("webvid/256", "train", data_dir=D)
    it = pipeline.TupleIterator(shard, global_batch=64, tokenize=tok, num_ref_frames=1,
                                stride_range=(1, 1), seed=0, state=restored_state_or_None)
    sharding = NamedSharding(mesh, P(('data', 'fsdp')))  # the batch axis (train.py: sharding.batch_spec)
    pipeline.check_global_batch(64, sharding)  # fail at start-up, not at the first step
    for host_batch in it:
        batch = pipeline.make_global_batch(host_batch, sharding)  # dict of global jax.Arrays
        ...
        state = it.get_state()                 # {'epoch', 'index'}: save it with the checkpoint

Sources are random access (`len`, `[k]`), which makes the position of the
iterator a pair of ints: `TupleIterator(..., state=saved)` continues with
exactly the batches the saved run would have produced next.

- Per-host split: host `p` of `P` reads the contiguous block `[p*n, (p+1)*n)`,
  `n = N // P` (the rule of `tfds.even_splits(..., drop_remainder=True)`, which
  is what `tfds_shard` asks TFDS for), so hosts are disjoint, cover the split
  up to `N % P` examples, and all run the same number of steps per epoch.
- Shuffle: each epoch, a permutation of the host's block from
  `np.random.default_rng([seed, 0, epoch, p])`. An epoch ends when fewer than
  `global_batch // P` examples are left; the rest wait for the next epoch's
  permutation.
- Tuples: the stride and target of global example `g` in epoch `e` come from
  `np.random.default_rng([seed, 1, e, g])`, independent of host count and batching;
  `start_fraction` > 0 makes a share of them the clip's first step (`sample_tuple`).
- Frames are delivered as uint8 (H, W, 3): a quarter of the host-to-device
  traffic of float32. Map them to [-1, 1] on device with `pixels.to_model_range`.
- Batches are produced by a background thread into a bounded queue.

TensorFlow Datasets is imported only by `tfds_shard`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding

from artv_jax.data import shapes

Tokenize = Callable[[str], np.ndarray]


# --------------------------------------------------------------------------
# Host shards: this host's part of a split, random access by global index.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostShard:
    """Examples `start .. start + length - 1` of a split (the part this host reads).

    `read(g)` returns example `g` (global index) as a dict with 'video' (uint8
    (T, H, W, 3) array, or a sequence of T encoded PNG/JPEG frames, decoded
    only where used) and 'caption' (str or UTF-8 bytes).
    """

    read: Callable[[int], dict[str, Any]]
    start: int
    length: int
    process_index: int
    process_count: int

    def __len__(self) -> int:
        return self.length


def host_block(num_examples: int, process_index: int | None = None,
               process_count: int | None = None) -> tuple[int, int]:
    """(start, length) of this host's block of a split of `num_examples` (drop-remainder even split)."""
    p = jax.process_index() if process_index is None else process_index
    n_proc = jax.process_count() if process_count is None else process_count
    if not 0 <= p < n_proc:
        raise ValueError(f"process_index {p} out of range for {n_proc} processes")
    length = num_examples // n_proc
    if length == 0:
        raise ValueError(f"a split of {num_examples} examples cannot give every one of {n_proc} hosts an example")
    return p * length, length


def shapes_shard(split: str = "train", size: int = shapes.DEFAULT_SIZE, num_frames: int = shapes.DEFAULT_NUM_FRAMES,
                 *, num_examples: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> HostShard:
    """This host's part of a shapes-world split, rendered on demand (no build, no TensorFlow)."""
    source = shapes.ShapesSource(split, size, num_frames, num_examples)
    start, length = host_block(len(source), process_index, process_count)
    return HostShard(source.__getitem__, start, length, *_process(process_index, process_count))


def tfds_shard(builder, split: str = "train", *, data_dir: str | None = None,
               process_index: int | None = None, process_count: int | None = None) -> HostShard:
    """This host's part of a prepared TFDS data set.

    `builder` is a TFDS builder (e.g. from `shapes.builder(...)` or
    `webvid.builder(...)`) or a name such as `artv_shapes/s32` or `webvid/256`
    (looked up in `data_dir`). The data set must be prepared in the
    array_record format (our builders' default);
    `tfds.split_for_jax_process(..., drop_remainder=True)` picks this host's
    examples and only those are opened. Frames stay encoded until the tuple
    sampler decodes the few it uses.
    """
    import tensorflow_datasets as tfds

    if isinstance(builder, str):
        from artv_jax.data import webvid

        shapes.builder_class(), webvid.builder_class()  # register our builders with TFDS
        builder = tfds.builder(builder, data_dir=data_dir)
    p, n_proc = _process(process_index, process_count)
    if split not in builder.info.splits:
        raise ValueError(f"{builder.info.full_name} at {builder.data_dir} has no split {split!r}; it has "
                         f"{list(builder.info.splits)} (is it prepared?)")
    start, length = host_block(builder.info.splits[split].num_examples, p, n_proc)
    sub = tfds.split_for_jax_process(split, process_index=p, process_count=n_proc, drop_remainder=True)
    source = builder.as_data_source(sub, deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE)
    if len(source) != length:
        raise RuntimeError(f"TFDS gave {len(source)} examples for {sub}, expected {length}")

    def read(g: int) -> dict[str, Any]:
        feature = source[g - start].features.feature
        return {"video": list(feature["video"].bytes_list.value), "caption": feature["caption"].bytes_list.value[0]}

    return HostShard(read, start, length, p, n_proc)


def _process(process_index, process_count) -> tuple[int, int]:
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


# --------------------------------------------------------------------------
# Training tuples.
# --------------------------------------------------------------------------


def sample_tuple(num_frames: int, num_ref_frames: int, stride_range: tuple[int, int],
                 rng: np.random.Generator, start_fraction: float = 0.0) -> tuple[int, int]:
    """(target index i, stride s) with `i - s >= 0`; s uniform over the feasible part of `stride_range`.

    `i` is then uniform over `s .. num_frames-1`. References that would fall
    before the clip's start (`i - s*r < 0`) are the clip's first frame at that
    stride repeated (`reference_indices`), exactly the window the sampler
    starts a new video with, so frames 1..R-1 of a sampled video are trained
    cases too.

    `start_fraction`: the probability that `i = s` instead, the first step of
    the clip, whose references and anchor are all frame 0. It is the step that
    starts every sampled video, and the only one where the motion cannot be
    read off the frames (later, reference minus anchor shows it): the text
    alone says which way to go. Uniform `i` gives it `1 / (num_frames - s)`
    of the tuples. With 0 (the default) no extra random number is drawn, so
    the tuples are those of a pipeline without the option.
    """
    lo, hi = stride_range
    if not 1 <= lo <= hi:
        raise ValueError(f"stride_range must be (lo, hi) with 1 <= lo <= hi, got {stride_range}")
    if num_ref_frames < 1:
        raise ValueError(f"num_ref_frames must be >= 1, got {num_ref_frames}")
    _check_fraction(start_fraction)
    hi = min(hi, num_frames - 1)
    if hi < lo:
        raise ValueError(f"a clip of {num_frames} frames cannot hold a reference frame and a target at stride >= {lo}")
    stride = int(rng.integers(lo, hi + 1))
    target = int(rng.integers(stride, num_frames))
    if start_fraction and rng.random() < start_fraction:
        target = stride
    return target, stride


def _check_fraction(value: float, name: str = "start_fraction") -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def reference_indices(target: int, stride: int, num_ref_frames: int) -> list[int]:
    """Frame indices of the R references of `target`, oldest first.

    `target - stride*r` where that is in the clip; before the clip's start, the
    earliest frame of the same stride, `target mod stride`, repeated (frame 0
    at stride 1).
    """
    return [target - stride * min(r, target // stride) for r in range(num_ref_frames, 0, -1)]


def training_tuple(example: dict[str, Any], *, rng: np.random.Generator, num_ref_frames: int,
                   stride_range: tuple[int, int], tokenize: Tokenize, start_fraction: float = 0.0,
                   bounce_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """One training tuple from one clip: target, refs (R, oldest first), anchor, tokens, stride, frame_index.

    `bounce_fraction` (the shapes world, stride 1): the probability that the target is instead one of the
    clip's bounce steps (`shapes.bounce_steps`, from the example's start x, y and direction), where the object
    turns and the references' motion, carried on, would be wrong. A clip has at most a few of them in its 15
    steps, and every one a long rollout meets decides whether the object goes on moving. Clips without a
    bounce keep their draw. With 0 (the default) no extra random number is drawn.
    """
    video = example["video"]
    i, s = sample_tuple(len(video), num_ref_frames, stride_range, rng, start_fraction)
    if bounce_fraction and rng.random() < bounce_fraction:
        if s != 1 or any(example.get(k) is None for k in ("x", "y", "direction")):
            raise ValueError("bounce_fraction needs shapes-world clips at stride 1: examples with the start x, y "
                             f"and direction (got stride {s}, keys {sorted(example)}).")
        direction = example["direction"]
        direction = direction.decode("utf-8") if isinstance(direction, bytes) else str(direction)
        bounces = shapes.bounce_steps(int(example["x"]), int(example["y"]), direction, video.shape[1], len(video))
        if bounces:
            i = int(bounces[rng.integers(len(bounces))])
    frames = [_frame(video, k) for k in [0] + reference_indices(i, s, num_ref_frames) + [i]]
    caption = example["caption"]
    tokens = np.asarray(tokenize(caption.decode("utf-8") if isinstance(caption, bytes) else caption))
    if tokens.ndim != 1 or tokens.dtype != np.int32:
        raise ValueError(f"tokenize must return a 1-D int32 array, got {tokens.dtype} {tokens.shape}")
    return {"target": frames[-1], "refs": np.stack(frames[1:-1]), "anchor": frames[0], "tokens": tokens,
            "stride": np.int32(s), "frame_index": np.int32(i)}


def _frame(video, k: int) -> np.ndarray:
    if isinstance(video, np.ndarray):
        return video[k]
    from PIL import Image

    with Image.open(io.BytesIO(video[k])) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------
# The resumable, prefetching iterator.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sampler:
    """The deterministic part of TupleIterator: which batch sits at (epoch, index)."""

    shard: HostShard
    tokenize: Tokenize
    batch_size: int
    num_ref_frames: int
    stride_range: tuple[int, int]
    seed: int
    shuffle: bool
    start_fraction: float = 0.0
    bounce_fraction: float = 0.0

    def order(self, epoch: int) -> np.ndarray:
        local = np.arange(len(self.shard))
        if self.shuffle:
            local = np.random.default_rng([self.seed, 0, epoch, self.shard.process_index]).permutation(local)
        return self.shard.start + local

    def example(self, g: int, epoch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, epoch, g])
        out = training_tuple(self.shard.read(g), rng=rng, num_ref_frames=self.num_ref_frames,
                             stride_range=self.stride_range, tokenize=self.tokenize,
                             start_fraction=self.start_fraction, bounce_fraction=self.bounce_fraction)
        out["example_id"] = np.int32(g)
        return out

    def batch(self, ids: np.ndarray, epoch: int, pool=None) -> dict[str, np.ndarray]:
        if pool is not None:
            examples = list(pool.map(lambda g: self.example(int(g), epoch), ids))
        else:
            examples = [self.example(int(g), epoch) for g in ids]
        try:
            return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
        except ValueError as e:
            shapes_seen = sorted({(k, ex[k].shape) for ex in examples for k in ("target", "tokens")})
            raise ValueError(f"examples of one batch differ in shape: {shapes_seen}") from e


class TupleIterator:
    """Batches of `global_batch // process_count` training tuples from a HostShard, forever (or `num_epochs`).

    Each batch is a dict of NumPy arrays: target (B,H,W,3) uint8, refs
    (B,R,H,W,3) uint8, anchor (B,H,W,3) uint8, tokens (B,L) int32, stride (B,)
    int32, frame_index (B,) int32, example_id (B,) int32 (global index).
    `get_state()` is the position after the last batch returned; pass it back as
    `state=` (or to `set_state`) to get the same following batches. A
    background thread (`num_threads` > 1: plus a pool that samples the examples
    of a batch in parallel) keeps up to `prefetch` batches ready.
    """

    def __init__(self, shard: HostShard, *, global_batch: int, tokenize: Tokenize, num_ref_frames: int = 1,
                 stride_range: tuple[int, int] = (1, 1), seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, prefetch: int = 2, num_threads: int = 1,
                 state: dict[str, int] | None = None, start_fraction: float = 0.0, bounce_fraction: float = 0.0):
        self._thread: threading.Thread | None = None
        self._pool = None
        self.batch_size = local_batch_size(global_batch, shard.process_count)
        self.steps_per_epoch = len(shard) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"this host's {len(shard)} examples are fewer than its batch of {self.batch_size}")
        # Checked here too, so a bad value fails at construction rather than at the first batch.
        self._sampler = _Sampler(shard, tokenize, self.batch_size, num_ref_frames, tuple(stride_range), seed, shuffle,
                                 _check_fraction(start_fraction), _check_fraction(bounce_fraction, "bounce_fraction"))
        self._num_epochs, self._prefetch = num_epochs, max(1, prefetch)
        if num_threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, "TupleIterator")
        self.set_state(state or {"epoch": 0, "index": 0})

    # State ----------------------------------------------------------------

    def get_state(self) -> dict[str, int]:
        """{'epoch', 'index'}: where the next batch starts (index = examples of the epoch already used)."""
        return dict(self._state)

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a state returned by `get_state` (restarts the prefetch thread)."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or index < 0 or index % self.batch_size or index // self.batch_size > self.steps_per_epoch:
            raise ValueError(f"state {state} does not fit batches of {self.batch_size} "
                             f"({self.steps_per_epoch} per epoch)")
        self._stop_thread()
        self._state = {"epoch": epoch, "index": index}
        self._queue: queue.Queue = queue.Queue(maxsize=self._prefetch)
        self._stop = threading.Event()
        # The thread holds the sampler, not `self`, so a dropped iterator is collected and stops it.
        self._thread = threading.Thread(
            target=_produce, name="TupleIterator", daemon=True,
            args=(self._sampler, self._pool, self.steps_per_epoch, self._num_epochs, epoch, index, self._stop,
                  self._queue))
        self._thread.start()

    def order(self, epoch: int) -> np.ndarray:
        """Global example indices of this host in the order of `epoch`."""
        return self._sampler.order(epoch)

    # Iteration ------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # keep raising on later calls
            raise item
        if item is None:
            self._queue.put(None)
            raise StopIteration
        batch, self._state = item
        return batch

    def close(self) -> None:
        """Stops the prefetch thread (and pool)."""
        self._stop_thread()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        self._thread = None


def _produce(sampler: _Sampler, pool, steps_per_epoch: int, num_epochs: int | None, epoch: int, index: int,
             stop: threading.Event, out: queue.Queue) -> None:
    """The prefetch thread: puts (batch, state after it) items, then None at the end, or the exception raised."""
    order, order_epoch = None, None
    try:
        while not stop.is_set():
            if index // sampler.batch_size >= steps_per_epoch:
                epoch, index = epoch + 1, 0
            if num_epochs is not None and epoch >= num_epochs:
                _put(out, None, stop)
                return
            if order_epoch != epoch:
                order, order_epoch = sampler.order(epoch), epoch
            batch = sampler.batch(order[index:index + sampler.batch_size], epoch, pool)
            index += sampler.batch_size
            if not _put(out, (batch, {"epoch": epoch, "index": index}), stop):
                return
    except BaseException as e:  # delivered to the consumer
        _put(out, e, stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


# --------------------------------------------------------------------------
# Host batches -> global jax.Arrays.
# --------------------------------------------------------------------------


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
    """`global_batch // process_count`; ValueError unless it divides."""
    n_proc = jax.process_count() if process_count is None else process_count
    if global_batch <= 0 or global_batch % n_proc:
        raise ValueError(f"global batch {global_batch} does not divide over {n_proc} hosts")
    return global_batch // n_proc


def check_global_batch(global_batch: int, sharding: NamedSharding, process_count: int | None = None) -> None:
    """ValueError unless `global_batch` divides over the hosts and over the devices of the batch axes."""
    local_batch_size(global_batch, process_count)
    spec = sharding.spec[0] if len(sharding.spec) else None
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    n_dev = int(np.prod([sharding.mesh.shape[a] for a in axes])) if axes else 1
    if global_batch % n_dev:
        raise ValueError(f"global batch {global_batch} does not divide over the {n_dev} devices of the batch "
                         f"axes {axes} of mesh {dict(sharding.mesh.shape)}")


def make_global_batch(host_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's batch -> one global jax.Array per key, batch axis sharded by `sharding`.

    Every host calls this with its own `global_batch // process_count` rows.
    """
    out = {}
    for key, local in host_batch.items():
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        check_global_batch(global_shape[0], sharding)
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out
