"""What the zero-shot metric CLIs share: loading a run, generating videos for a prompt list in fixed-size batches,
shared flags, and the one-line exit for missing inputs."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import numpy as np


class MissingInput(Exception):
    """A file or directory the metric needs is absent; the message says which and where to get it (one line)."""


def fail(program: str, message: str) -> None:
    """Prints `program: error: message` as one line on stderr and exits with status 2."""
    print(f"{program}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def define_flags(flags, default_frames: int = 16) -> None:
    """The flags every metric CLI has: the run, the sampler settings and the sample count."""
    flags.DEFINE_string("workdir", "", "A training run's workdir (its latest checkpoint's EMA weights are used).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("num_frames", default_frames, "Frames per generated video.")
    flags.DEFINE_integer("batch", 8, "Videos generated together.")
    flags.DEFINE_integer("seed", 0, "Random seed (batch i uses fold_in(seed, i)).")
    flags.DEFINE_integer("steps", None, "DDIM steps per frame (default: the training config's).")
    flags.DEFINE_float("guidance", None, "Text guidance scale (default: the training config's).")
    flags.DEFINE_integer("limit", 0, "If > 0, score only this many videos (a quick check; not comparable).")
    flags.DEFINE_string("out", "", "Output JSON (default <workdir>/metrics/<metric>.json).")


def load_run(workdir: str, step: int | None):
    """(components, params, config) of a run's checkpoint; MissingInput if there is none."""
    from artv_jax import sample

    if not workdir:
        raise MissingInput("give --workdir, a training run's directory (with checkpoints/<step>/ in it).")
    try:
        return sample.load(workdir, step)
    except (sample.UsageError, FileNotFoundError) as e:
        raise MissingInput(f"{e} --workdir must be a training run's directory.") from None


def generate_videos(comps, params, config, prompts: Sequence[str], *, num_frames: int, batch: int, seed: int,
                    steps: int | None = None, guidance: float | None = None) -> Iterator[np.ndarray]:
    """Yields uint8 (b, num_frames, H, W, 3) videos for `prompts`, in order, `batch` at a time.

    The last batch is padded with its last prompt (and trimmed) so the sampler
    compiles once. Batch i is sampled with `fold_in(PRNGKey(seed), i)`, so
    results depend on `batch` as well as `seed`.
    """
    import jax

    from artv_jax import generate

    sampler = generate.sampler_from_config(comps, config, guidance=guidance, steps=steps)
    base = jax.random.PRNGKey(seed)
    batch = max(1, min(batch, len(prompts)))
    for i, start in enumerate(range(0, len(prompts), batch)):
        chunk = list(prompts[start:start + batch])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch - n)
        videos = generate.generate(comps, params, sampler, chunk, num_frames, jax.random.fold_in(base, i))
        yield videos[:n]
