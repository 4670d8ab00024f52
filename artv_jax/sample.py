r"""Sample a video from a trained ART·V: `python -m artv_jax.sample --workdir=DIR --prompt=...`.

    # text-to-video
    python -m artv_jax.sample --workdir=workdirs/shapes --prompt="a red square moving right on a black background"
    # multi-prompt: 16 frames of the first prompt, then 16 of the second
    python -m artv_jax.sample --workdir=W --prompt="..." --frames=16 --prompt="..." --frames=16
    # image-to-video (frame 0 given) and continuation (the video's frames given)
    python -m artv_jax.sample --workdir=W --prompt="..." --image=first.png --num_frames=32
    python -m artv_jax.sample --workdir=W --prompt="..." --video=start.mp4 --num_frames=64

Writes `--out` (default `video.mp4`) and a gif beside it. Uses the EMA
weights of the latest checkpoint (or `--step`). Bad input ends with a
one-line error and exit status 2: a word the model's vocabulary lacks, a
prompt longer than its text encoder takes, frames of the wrong size. A
CLIP-tokenized prompt past the token limit is cut, with a warning.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from artv_jax import runs


@dataclasses.dataclass
class Request:
    """What to generate: one video."""

    prompts: list[str]
    frames: list[int]  # frames per prompt (multi-prompt); sums to num_frames
    num_frames: int
    first_frames: np.ndarray | None  # uint8 (F, H, W, 3): image-to-video (F = 1) or continuation


def make_request(prompts, frames, num_frames, image, video, frame_size: int | None = None) -> Request:
    """Checks the command line and reads the given frames; runs.UsageError with one line on bad input.

    `frame_size` (the model's) also checks the given frames' size; without it
    call `check_frame_size` once the model is known.
    """
    from artv_jax import video_io

    prompts = list(prompts or [])
    frames = [int(f) for f in frames or []]
    if not prompts:
        raise runs.UsageError("give at least one --prompt.")
    if any(not p.strip() for p in prompts):
        raise runs.UsageError("empty --prompt.")
    if image and video:
        raise runs.UsageError("give --image (image-to-video) or --video (continuation), not both.")
    if frames:
        if len(frames) != len(prompts):
            raise runs.UsageError(f"--frames must be given once per --prompt: {len(prompts)} prompts, "
                                  f"{len(frames)} --frames.")
        if any(f <= 0 for f in frames):
            raise runs.UsageError(f"--frames must be positive, got {frames}.")
        if num_frames and num_frames != sum(frames):
            raise runs.UsageError(f"--num_frames={num_frames} but --frames add up to {sum(frames)}.")
        num_frames = sum(frames)
    else:
        if len(prompts) > 1:
            raise runs.UsageError("several --prompt values need --frames (frames per prompt).")
        num_frames = num_frames or 16
        if num_frames <= 0:
            raise runs.UsageError(f"--num_frames must be positive, got {num_frames}.")
        frames = [num_frames]
    first = None
    try:
        if image:
            first = video_io.read_image(image)[None]
        elif video:
            first = video_io.read_video(video, max_frames=num_frames)
    except FileNotFoundError as e:
        raise runs.UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 — a decoder error on user input is a usage error
        raise runs.UsageError(f"cannot read {image or video!r}: {e}") from None
    if first is not None and len(first) >= num_frames:
        raise runs.UsageError(f"{len(first)} frames are given and --num_frames is {num_frames}: nothing to generate.")
    request = Request(prompts, frames, num_frames, first)
    if frame_size is not None:
        check_frame_size(request, frame_size)
    return request


def check_frame_size(request: Request, frame_size: int) -> None:
    """runs.UsageError unless the given frames have the model's frame size."""
    first = request.first_frames
    if first is not None and first.shape[1:3] != (frame_size, frame_size):
        raise runs.UsageError(f"the given frames are {first.shape[2]}x{first.shape[1]}; this model makes "
                              f"{frame_size}x{frame_size} frames.")


def check_prompts(request: Request, tokenize) -> list[str]:
    """Tokenizes each prompt once: ValueError (one line) for a word outside the vocabulary or a prompt too long;
    returns a warning for each prompt a CLIP tokenizer cuts at its token limit."""
    warnings = []
    for prompt in request.prompts:
        tokenize(prompt)
        dropped = tokenize.cut_off(prompt) if hasattr(tokenize, "cut_off") else ""
        if dropped:
            warnings.append(f"the prompt {prompt!r} is longer than the text encoder's {tokenize.max_length} tokens: "
                            f"{dropped!r} is cut off and ignored.")
    return warnings


def sample(comps, params, config, request: Request, *, seed: int = 0, guidance: float | None = None,
           steps: int | None = None, progress: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3): one video for a request."""
    from artv_jax import generate

    sampler = generate.sampler_from_config(comps, config, guidance=guidance, steps=steps)
    schedule = [[p] for p, n in zip(request.prompts, request.frames) for _ in range(n)]
    first = None if request.first_frames is None else request.first_frames[None]
    video = generate.generate(comps, params, sampler, schedule, request.num_frames, jax.random.PRNGKey(seed),
                              first_frames=first, progress=progress)
    return video[0]


def main(argv):
    del argv
    from absl import flags

    from artv_jax import video_io

    FLAGS = flags.FLAGS
    with runs.usage_errors("artv_jax.sample"):
        workdir = FLAGS.workdir or FLAGS.checkpoint
        if not workdir:
            raise runs.UsageError("give --workdir (a training run) or --checkpoint.")
        if os.path.splitext(FLAGS.out)[1].lower() not in (".mp4", ".gif"):
            raise runs.UsageError(f"--out must end in .mp4 or .gif, got {FLAGS.out!r}.")
        out_dir = existing = os.path.dirname(os.path.abspath(FLAGS.out))
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise runs.UsageError(f"--out={FLAGS.out!r}: {existing!r} is a file, not a directory.")
        request = make_request(FLAGS.prompt, FLAGS.frames, FLAGS.num_frames, FLAGS.image, FLAGS.video)
        comps, params, config = runs.load(workdir, FLAGS.step)  # the slow part comes after the cheap checks
        check_frame_size(request, comps.frame_size)
        for warning in check_prompts(request, comps.tokenize):
            print(f"artv_jax.sample: warning: {warning}", file=sys.stderr)
    video = sample(comps, params, config, request, seed=FLAGS.seed, guidance=FLAGS.guidance, steps=FLAGS.steps)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.splitext(FLAGS.out)[0]
    video_io.write_mp4(base + ".mp4", video, fps=FLAGS.fps)
    video_io.write_gif(base + ".gif", video, fps=FLAGS.fps, scale=max(1, 128 // comps.frame_size))
    print(f"wrote {base}.mp4 and {base}.gif ({len(video)} frames, {video.shape[2]}x{video.shape[1]})")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", "", "A training run's workdir (its latest checkpoint is used).")
    flags.DEFINE_string("checkpoint", "", "A checkpoint step directory (<workdir>/checkpoints/<step>) or a workdir.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_multi_string("prompt", [], "Text prompt; repeat with --frames for a multi-prompt video.")
    flags.DEFINE_multi_integer("frames", [], "Frames for each --prompt, in order.")
    flags.DEFINE_integer("num_frames", 0, "Video length, given frames included (default 16).")
    flags.DEFINE_string("image", "", "First frame (image-to-video), at the model's frame size.")
    flags.DEFINE_string("video", "", "A video to continue (its frames are kept), at the model's frame size.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_float("guidance", None, "Text guidance scale (default: the training config's).")
    flags.DEFINE_integer("steps", None, "DDIM steps per frame (default: the training config's).")
    flags.DEFINE_integer("fps", 8, "Frames per second of the written video.")
    flags.DEFINE_string("out", "video.mp4", "Output path (.mp4 or .gif); the other format is written beside it.")


if __name__ == "__main__":
    runs.run("artv_jax.sample", main, _define_flags)
