"""Text (and optional first frames) -> uint8 videos, for any built `Components` and parameters.

The one place that turns prompts into embeddings, runs the autoregressive
sampler and decodes latents to pixels; training (end-of-run samples),
evaluation and the sampling CLI all call `generate`, and everything that
generates more videos than fit in one batch calls `generate_batches`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from artv_jax.components import Components
from artv_jax.diffusion import sampling
from artv_jax.pixels import to_model_range, to_uint8


def make_sampler(components: Components, sample_config, model_config) -> sampling.Sampler:
    """A `Sampler` from a config's `sample` section (num_steps, eta, guidance, ref_level, chunk_size).

    `model_config` (the config's `model` section) carries the ablation
    switches `use_mask` / `use_anchor`, which sampling must follow as training did.
    """
    return sampling.Sampler(components.model, components.schedule, sampling.SamplerConfig(
        num_steps=sample_config.num_steps, eta=sample_config.eta, text_guidance=sample_config.text_guidance,
        ref_guidance=sample_config.ref_guidance, history_level=sample_config.history_level,
        ref_level=sample_config.ref_level,
        chunk_size=sample_config.chunk_size, use_mask=bool(model_config.use_mask),
        use_anchor=bool(model_config.use_anchor)))


def sampler_from_config(components: Components, config, *, guidance: float | None = None,
                        steps: int | None = None) -> sampling.Sampler:
    """`make_sampler` for a run's config, with the text guidance and DDIM steps optionally overridden."""
    s = config.sample.copy_and_resolve_references()
    if guidance is not None:
        s.text_guidance = guidance
    if steps is not None:
        s.num_steps = steps
    return make_sampler(components, s, config.model)


def embed(components: Components, params: dict, prompts: Sequence[str]) -> jax.Array:
    """(B, L, D) text embeddings of a batch of prompts."""
    tokens = np.stack([components.tokenize(p) for p in prompts])
    return components.encode_text(params, jnp.asarray(tokens))


def generate(components: Components, params: dict, sampler: sampling.Sampler, prompts: Sequence[str] | Sequence[
        Sequence[str]], num_frames: int, key: jax.Array, *, first_frames: np.ndarray | None = None,
             teacher_forced: bool = False, progress: bool = False) -> np.ndarray:
    """Generates a batch of videos; returns uint8 (B, N, H, W, 3).

    Args:
      prompts: B prompts (one per video, held for all frames), or a per-frame
        schedule: N lists of B prompts.
      num_frames: N, the video length (given frames included).
      first_frames: optional uint8 (B, F, H, W, 3): F = 1 for image-to-video,
        F > 1 to continue those videos.
      teacher_forced: `first_frames` is the whole true video (F = N) and every frame after the first is
        generated from the true frames before it (`sampling.sample_teacher_forced`), not from its own.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}.")
    per_frame = isinstance(prompts[0], (list, tuple))
    if per_frame:
        if len(prompts) != num_frames:
            raise ValueError(f"a per-frame prompt schedule needs {num_frames} entries, got {len(prompts)}.")
        unique = sorted({p for frame in prompts for p in frame})
        table = dict(zip(unique, embed(components, params, unique)))
        texts = jnp.stack([jnp.stack([table[p] for p in frame]) for frame in prompts])
    else:
        emb = embed(components, params, prompts)
        texts = jnp.broadcast_to(emb[None], (num_frames, *emb.shape))
    batch = texts.shape[1]
    uncond = jnp.broadcast_to(embed(components, params, [""]), (batch, *texts.shape[2:]))
    size = components.latent_size
    latent_shape = (batch, size, size, components.autoencoder.channels)
    encoded = None
    if first_frames is not None:
        first_frames = np.asarray(first_frames)
        want = (batch, components.frame_size, components.frame_size, 3)
        if first_frames.ndim != 5 or (first_frames.shape[0], *first_frames.shape[2:]) != want:
            raise ValueError(f"first frames must be uint8 (B={batch}, F, {want[1]}, {want[2]}, 3), "
                             f"got {first_frames.shape}.")
        frames = to_model_range(jnp.asarray(first_frames.transpose(1, 0, 2, 3, 4)))
        encoded = jnp.stack([components.autoencoder.encode(params.get("vae"), f) for f in frames])
    if teacher_forced:
        if encoded is None or encoded.shape[0] != num_frames:
            raise ValueError(f"teacher forcing needs the whole true video as first frames ({num_frames} frames), "
                             f"got {0 if encoded is None else encoded.shape[0]}.")
        latents = sampling.sample_teacher_forced(sampler, params["artv"], key, texts, uncond, encoded,
                                                 progress=progress)
        first_frames = first_frames[:, :1]  # only frame 0 is given; the others are the model's
    else:
        latents = sampling.sample_video(sampler, params["artv"], key, texts, uncond, first_frames=encoded,
                                        latent_shape=latent_shape, progress=progress)
    decode = jax.jit(components.autoencoder.decode)
    pixels = np.stack([np.asarray(decode(params.get("vae"), z)) for z in latents])  # (N, B, H, W, 3), one frame at a time
    videos = to_uint8(pixels).transpose(1, 0, 2, 3, 4)
    if first_frames is not None:  # given frames are returned as given, not re-decoded
        videos[:, :first_frames.shape[1]] = first_frames
    return videos


def generate_batches(components: Components, params: dict, sampler: sampling.Sampler, prompts: Sequence[str],
                     num_frames: int, key: jax.Array, *, batch: int, first_frames: np.ndarray | None = None,
                     teacher_forced: bool = False, progress: bool = False) -> Iterator[np.ndarray]:
    """Yields uint8 (b, N, H, W, 3) videos for `prompts` (one per video), in order, `batch` at a time.

    The batch that starts at video `start` is sampled with
    `jax.random.fold_in(key, start)`, so a video depends on its position, the
    batch size and `key`. The last batch is padded to `batch` with its last
    video (and trimmed) so the sampler compiles once; `batch` is cut to the
    number of videos. Padding leaves the real videos as an unpadded batch
    makes them: the noise is drawn element by element (tests/test_generate.py).

    Args:
      first_frames: optional uint8 (V, F, H, W, 3), the given frames of each of
        the V = len(prompts) videos (see `generate`).
      teacher_forced: see `generate` (`first_frames` then holds the whole true videos).
    """
    if not prompts:
        raise ValueError("no prompts to generate videos for.")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}.")
    if first_frames is not None and len(first_frames) != len(prompts):
        raise ValueError(f"first frames are given for {len(first_frames)} videos, prompts for {len(prompts)}.")
    batch = min(batch, len(prompts))
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        n = len(chunk)
        pad = [n - 1] * (batch - n)
        first = None
        if first_frames is not None:
            first = np.asarray(first_frames[start:start + n])
            first = np.concatenate([first, first[pad]])
        videos = generate(components, params, sampler, chunk + [chunk[i] for i in pad], num_frames,
                          jax.random.fold_in(key, start), first_frames=first, teacher_forced=teacher_forced,
                          progress=progress)
        yield videos[:n]


def generate_all(components: Components, params: dict, sampler: sampling.Sampler, prompts: Sequence[str],
                 num_frames: int, key: jax.Array, *, batch: int, first_frames: np.ndarray | None = None,
                 teacher_forced: bool = False, progress: bool = False) -> np.ndarray:
    """uint8 (V, N, H, W, 3): `generate_batches` concatenated, one video per prompt."""
    return np.concatenate(list(generate_batches(components, params, sampler, prompts, num_frames, key, batch=batch,
                                                first_frames=first_frames, teacher_forced=teacher_forced,
                                                progress=progress)))
