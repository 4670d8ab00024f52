r"""Zero-shot CLIPSIM on MSR-VTT: `python -m artv_jax.metrics.clipsim_msrvtt --workdir=RUN --msrvtt=DIR --clip=DIR`.

    python -m artv_jax.metrics.clipsim_msrvtt --workdir=workdirs/webvid --msrvtt=data/msrvtt --clip=clip-vit-base-patch32
    python -m artv_jax.metrics.clipsim_msrvtt --workdir=W --msrvtt=D --clip=C --limit=8 --steps=10   # a smoke run

Protocol: every caption of the MSR-VTT test split (2,990 videos, ~20
captions each; `--captions=first` keeps one per video) is a prompt; one
`--num_frames` (16) video is generated per caption. CLIPSIM is the cosine
similarity between each frame's CLIP image embedding and the caption's CLIP
text embedding, averaged over the frames of a video and then over videos (raw
cosine, not x100: the convention of the papers that report it, values near
0.2-0.3; see `clip_vision.clipsim`). Only the captions are read, not the
MSR-VTT videos. The CLIP model is a transformers `CLIPModel` directory; the
papers use ViT-B/32 (openai/clip-vit-base-patch32).

`--msrvtt` is the annotation JSON itself or a directory holding
`test_videodatainfo.json` (MSR-VTT's test release) or `MSRVTT_data.json`
(the combined train/val/test file many retrieval works ship): both have
`videos` (with `split`) and `sentences` (`video_id`, `caption`).

Writes `--out` (default `<workdir>/metrics/clipsim_msrvtt.json`) with the
score of every caption. Missing inputs end with one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence

import numpy as np

from artv_jax import runs
from artv_jax.metrics.generation import define_flags, generate_videos

PROGRAM = "artv_jax.metrics.clipsim_msrvtt"
ANNOTATION_FILES = ("test_videodatainfo.json", "MSRVTT_data.json")
MSRVTT_URL = "https://www.microsoft.com/en-us/research/publication/msr-vtt-a-large-video-description-dataset-for-bridging-video-and-language/"
CLIP_URL = "https://huggingface.co/openai/clip-vit-base-patch32"
CLIP_FILES = ("config.json", "vocab.json", "merges.txt")


def find_annotations(path: str) -> str:
    """The MSR-VTT annotation JSON: `path` itself, or the first of ANNOTATION_FILES inside it; else UsageError."""
    if path and os.path.isfile(path):
        return path
    for name in ANNOTATION_FILES:
        if path and os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise runs.UsageError(f"no MSR-VTT annotations at {path!r}: need {' or '.join(ANNOTATION_FILES)} (MSR-VTT's "
                          f"test_videodatainfo.json from {MSRVTT_URL}) in the --msrvtt directory, or its path.")


def read_test_captions(annotation_file: str, which: str = "all") -> list[tuple[str, str]]:
    """(video_id, caption) of the test split, ordered by video number then as listed; `which="first"`: one per video."""
    with open(annotation_file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "sentences" not in data or "videos" not in data:
        raise ValueError(f"{annotation_file!r} is not an MSR-VTT annotation file (needs 'videos' and 'sentences').")
    videos = data["videos"]
    if any("split" in v for v in videos):
        test_ids = {v["video_id"] for v in videos if v.get("split") == "test"}
    else:  # a test-only file
        test_ids = {v["video_id"] for v in videos}
    out, seen = [], set()
    for s in sorted(data["sentences"], key=lambda s: _video_number(s["video_id"])):  # stable: keeps caption order
        if s["video_id"] in test_ids and (which == "all" or s["video_id"] not in seen):
            out.append((s["video_id"], s["caption"].strip()))
            seen.add(s["video_id"])
    if not out:
        raise ValueError(f"{annotation_file!r} has no test-split captions.")
    return out


def _video_number(video_id: str) -> int:
    digits = re.sub(r"\D", "", str(video_id))
    return int(digits) if digits else -1


def check_clip(path: str) -> None:
    """UsageError unless `path` is a CLIPModel directory with its tokenizer files and a weight file."""
    present = path and os.path.isdir(path)
    missing = [f for f in CLIP_FILES if not (present and os.path.isfile(os.path.join(path, f)))]
    if present and not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(path)):
        missing.append("model.safetensors")
    if missing:
        raise runs.UsageError(f"no CLIP model at {path!r} ({', '.join(missing)} missing): need a transformers "
                              f"CLIPModel directory with its tokenizer, e.g. {CLIP_URL} (config.json, "
                              f"model.safetensors, vocab.json, merges.txt, tokenizer_config.json), passed as --clip.")


def evaluate(comps, params, config, captions: Sequence[tuple[str, str]], clip_dir: str, *, num_frames: int = 16,
             batch: int = 8, seed: int = 0, steps: int | None = None, guidance: float | None = None):
    """Generates one video per caption and scores it with CLIP; returns a report with "clipsim" and per-caption scores."""
    import jax
    import jax.numpy as jnp

    from artv_jax.metrics import clip_vision
    from artv_jax.pretrained import load_tokenizer
    from artv_jax.tokenizers import CLIPTokenize, tokenize_all

    clip = clip_vision.load_clip(clip_dir)
    tokenize = CLIPTokenize(load_tokenizer(clip_dir), max_length=clip.text.config.max_position_embeddings)
    image_embeds = jax.jit(clip.image_embeds)
    text_embeds = jax.jit(clip.text_embeds)
    prompts = [c for _, c in captions]
    began = time.time()
    scores = []
    videos = generate_videos(comps, params, config, prompts, num_frames=num_frames, batch=batch, seed=seed,
                             steps=steps, guidance=guidance)
    for start, video in zip(range(0, len(prompts), batch), videos):
        n, f = video.shape[:2]
        pixels = clip_vision.preprocess(video, clip.image_size).reshape(n * f, clip.image_size, clip.image_size, 3)
        images = np.asarray(image_embeds(jnp.asarray(pixels))).reshape(n, f, -1)
        ids = tokenize_all(tokenize, prompts[start:start + n])
        texts = np.asarray(text_embeds(jnp.asarray(ids)))
        scores.extend(clip_vision.frame_similarities(images, texts).mean(axis=1).tolist())
    return {
        "clipsim": float(np.mean(scores)), "num_videos": len(scores), "num_frames": num_frames,
        "clip": os.path.abspath(clip_dir), "seed": seed, "batch": batch, "steps": steps, "guidance": guidance,
        "seconds": round(time.time() - began, 1),
        "per_caption": [{"video_id": v, "caption": c, "clipsim": s} for (v, c), s in zip(captions, scores)],
    }


def main(argv):
    del argv
    from absl import flags

    from artv_jax.tokenizers import WordTokenizer

    FLAGS = flags.FLAGS
    with runs.usage_errors(PROGRAM):
        if FLAGS.captions not in ("all", "first"):
            raise ValueError(f"--captions must be all or first, got {FLAGS.captions!r}.")
        annotations = find_annotations(FLAGS.msrvtt)
        check_clip(FLAGS.clip)
        captions = read_test_captions(annotations, FLAGS.captions)
        if FLAGS.limit:
            captions = captions[:FLAGS.limit]
        comps, params, config = runs.load(FLAGS.workdir, FLAGS.step)  # the slow part comes after the cheap checks
        if isinstance(comps.tokenize, WordTokenizer):  # it refuses words outside its vocabulary: before generating
            for _, caption in captions:
                comps.tokenize(caption)
    report = evaluate(comps, params, config, captions, FLAGS.clip, num_frames=FLAGS.num_frames, batch=FLAGS.batch,
                      seed=FLAGS.seed, steps=FLAGS.steps, guidance=FLAGS.guidance)
    report.update(workdir=os.path.abspath(FLAGS.workdir), step=FLAGS.step, annotations=os.path.abspath(annotations),
                  captions=FLAGS.captions, limited=bool(FLAGS.limit))
    out = FLAGS.out or os.path.join(FLAGS.workdir, "metrics", "clipsim_msrvtt.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"CLIPSIM {report['clipsim']:.4f} over {report['num_videos']} captions; wrote {out}")


def _define_flags():
    from absl import flags

    define_flags(flags)
    flags.DEFINE_string("msrvtt", "", "MSR-VTT annotation JSON, or a directory holding test_videodatainfo.json.")
    flags.DEFINE_string("clip", "", "A transformers CLIPModel directory (with tokenizer files).")
    flags.DEFINE_string("captions", "all", "all: every test caption; first: one caption per test video.")


if __name__ == "__main__":
    runs.run(PROGRAM, main, _define_flags)
