"""What the zero-shot metric CLIs share: their flags, and videos for a prompt list generated in fixed-size batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def define_flags(flags, default_frames: int = 16) -> None:
    """The flags every metric CLI has: the run, the sampler settings and the sample count."""
    flags.DEFINE_string("workdir", "", "A training run's workdir (its latest checkpoint's EMA weights are used).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("num_frames", default_frames, "Frames per generated video.")
    flags.DEFINE_integer("batch", 8, "Videos generated together.")
    flags.DEFINE_integer("seed", 0, "Random seed (the batch starting at video i uses fold_in(seed, i)).")
    flags.DEFINE_integer("steps", None, "DDIM steps per frame (default: the training config's).")
    flags.DEFINE_float("guidance", None, "Text guidance scale (default: the training config's).")
    flags.DEFINE_integer("limit", 0, "If > 0, score only this many videos (a quick check; not comparable).")
    flags.DEFINE_string("out", "", "Output JSON (default <workdir>/metrics/<metric>.json).")


def generate_videos(comps, params, config, prompts: Sequence[str], *, num_frames: int, batch: int, seed: int,
                    steps: int | None = None, guidance: float | None = None) -> Iterator[np.ndarray]:
    """Yields uint8 (b, num_frames, H, W, 3) videos for `prompts`, in order, `batch` at a time.

    `generate.generate_batches` with the run's sampler: the batch that starts
    at video `start` is sampled with `fold_in(PRNGKey(seed), start)` (the one
    scheme of evaluation and training; before, batch i used `fold_in(seed, i)`),
    so results depend on `batch` as well as `seed`. The last batch is padded
    with its last prompt (and trimmed) so the sampler compiles once.
    """
    import jax

    from artv_jax import generate

    sampler = generate.sampler_from_config(comps, config, guidance=guidance, steps=steps)
    yield from generate.generate_batches(comps, params, sampler, prompts, num_frames, jax.random.PRNGKey(seed),
                                         batch=batch)
