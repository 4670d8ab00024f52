r"""Shapes-world evaluation of a trained ART·V: `python -m artv_jax.evaluate --workdir=DIR`.

For each caption of the shapes world (all 144 by default) it generates a
text-to-video and an image-to-video rollout (the first frame rendered exactly
from the caption and a start position), reads background, object colour,
shape, motion direction, speed and object count off every frame
(`artv_jax.metrics.shapes_score`), and measures how they drift over the rollout.
`text_to_video_scores` is the shorter protocol training ends with (`eval.json`).

    python -m artv_jax.evaluate --workdir=workdirs/shapes                       # 144 captions, 16/64/256 frames
    python -m artv_jax.evaluate --workdir=W --captions=24 --lengths=16,64 --steps=10   # a quicker look
    python -m artv_jax.evaluate --workdir=W --modes=i2v --ref_guidance=1.5               # with history guidance
    python -m artv_jax.evaluate --workdir=W --modes=tf --lengths=16,64 --steps=10       # one step from the truth
    python -m artv_jax.evaluate --compare=A/evaluation/report.json,B/evaluation/report.json  # B - A, paired

`--modes=tf` (teacher-forced) generates every frame from the true frames
before it (`shapes_score.one_step_scores`): the model's one-step skill, by
kind of step (the first, bounces, the others), without the errors of its own
frames that a rollout adds. A rollout that does worse than its teacher-forced
twin drifts (exposure bias); one that does as badly has not learned the step.

Writes to `--out` (default `<workdir>/evaluation`): `report.json` (scores per
mode and rollout length, per-frame drift curves, per-video scores over the
longest rollout), `drift.png` (frame accuracy and colour distance against
frame index) and `samples.png` (a contact sheet).

Every run scores the same cases for a given `--captions` (caption and start
position), so two runs' reports pair video by video: `--compare` prints each
score's mean difference and its standard error, a far tighter test than two
independent means (`paired_gaps`).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from artv_jax import runs, storage
from artv_jax.data import shapes
from artv_jax.metrics import shapes_score

ROLLOUTS = ("t2v", "i2v")
MODES = ROLLOUTS + ("tf",)  # tf: teacher-forced, every frame one step from the true video (no rollout)
CURVES = ("clean", "frame_ok", "colour_distance", "area_error", "one_object", "track_error", "travel_ok")


def _check_num_captions(num_captions: int) -> None:
    total = len(shapes.all_captions())
    if not 1 <= num_captions <= total:
        raise ValueError(f"--captions must be in 1..{total}, got {num_captions}.")


def check_options(num_captions: int, lengths, modes) -> list[int]:
    """Validates the evaluation options (ValueError naming the bad one); returns the sorted distinct lengths."""
    _check_num_captions(num_captions)
    lengths = sorted(set(int(n) for n in lengths))
    if not lengths or lengths[0] < 2:
        raise ValueError(f"rollout lengths must be >= 2 frames, got {lengths}.")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {MODES}.")
    return lengths


def eval_cases(num_captions: int, size: int) -> list[dict]:
    """`num_captions` captions spread over the 144, each with a start position for image-to-video."""
    _check_num_captions(num_captions)
    captions = shapes.all_captions()
    picks = np.linspace(0, len(captions) - 1, num_captions).round().astype(int)
    last = size - shapes.box_size(size)
    cases = []
    for i in picks:
        attrs = shapes_score.parse_caption(captions[i])
        rng = np.random.default_rng([2, int(i)])  # fixed start positions, independent of the selection
        attrs.update(x=int(rng.integers(0, last + 1)), y=int(rng.integers(0, last + 1)))
        cases.append({"caption": captions[i], **attrs})
    return cases


def rollouts(comps, params, sampler, cases, mode: str, num_frames: int, batch: int, key) -> np.ndarray:
    """uint8 (N, num_frames, S, S, 3): one video per case, `batch` at a time (`generate.generate_batches`).

    t2v from the caption alone, i2v from the rendered frame 0; tf (teacher-forced) renders the whole true video
    and generates each later frame from the true frames before it.
    """
    from artv_jax import generate

    first = None
    if mode in ("i2v", "tf"):
        first = np.stack([shapes.render_video(c["background"], c["colour"], c["shape"], c["direction"], c["x"], c["y"],
                                              size=comps.frame_size, num_frames=1 if mode == "i2v" else num_frames)
                          for c in cases])
    return generate.generate_all(comps, params, sampler, [c["caption"] for c in cases], num_frames, key, batch=batch,
                                 first_frames=first, teacher_forced=mode == "tf", progress=True)


def evaluate(comps, params, config, *, num_captions: int = 144, lengths=(16, 64, 256), modes=ROLLOUTS,
             steps: int | None = None, batch: int = 48, seed: int = 0) -> tuple[dict, dict]:
    """(report, videos by mode) for a model: scores per mode and rollout length, and drift curves."""
    from artv_jax import generate

    lengths = check_options(num_captions, lengths, modes)
    sampler = generate.sampler_from_config(comps, config, steps=steps or None)
    s = sampler.config
    cases = eval_cases(num_captions, comps.frame_size)
    key = jax.random.PRNGKey(seed)
    settings = {"num_steps": s.num_steps, "text_guidance": s.text_guidance, "ref_level": s.ref_level, "eta": s.eta,
                "ref_guidance": s.ref_guidance, "history_level": s.history_level}
    report = {"num_captions": len(cases), "captions": [c["caption"] for c in cases], "lengths": lengths,
              "sampler": settings}
    videos = {}
    for mode in modes:
        t0 = time.time()
        v = rollouts(comps, params, sampler, cases, mode, lengths[-1], batch, jax.random.fold_in(key, len(videos)))
        videos[mode] = v
        if mode == "tf":
            report[mode] = {"by_length": {str(n): shapes_score.one_step_scores(v[:, :n], cases) for n in lengths},
                            "seconds": round(time.time() - t0, 1)}
            continue
        attrs = cases if mode == "i2v" else [{k: c[k] for k in c if k not in ("x", "y")} for c in cases]
        full = shapes_score.score_batch(v, attrs, drift_frames=lengths, curves=True, per_video=True)
        by_length = {str(n): _finite(shapes_score.score_batch(v[:, :n], attrs, drift_frames=())) for n in lengths}
        report[mode] = {"by_length": by_length, "seconds": round(time.time() - t0, 1),
                        "curves": {k: _rounded(full["curves"][k]) for k in CURVES},
                        "per_video": {k: _rounded(x) for k, x in full["per_video"].items()}}
    return report, videos


def _rounded(values) -> list:
    """A float array as a JSON list: 5 decimals, None for NaN."""
    return [round(float(x), 5) if np.isfinite(x) else None for x in values]


def paired_gaps(base: dict, other: dict, mode: str = "i2v") -> dict[str, dict[str, float]]:
    """`other` - `base` per score of two `evaluate` reports on the same cases, paired video by video.

    For each per-video score (over the longest rollout): `gap`, the mean of the per-video differences, `se`, its
    standard error (NaN below two pairs), and `n`, the pairs where both runs have the score. Two runs differ
    beyond the sampling noise of their videos where |gap| > 2 se; the noise of training is another matter
    (seeds). Raises ValueError unless both reports hold `mode` over the same captions and lengths.
    """
    for name, r in (("base", base), ("other", other)):
        if not isinstance(r, dict) or "lengths" not in r:
            raise ValueError(f"the {name} report is not an evaluate report.json (no 'lengths').")
        if "per_video" not in r.get(mode, {}):
            raise ValueError(f"the {name} report has no per-video {mode!r} scores (an evaluate report from before "
                             f"per-video scores, or without --modes={mode}).")
    if base.get("captions") != other.get("captions") or base["lengths"] != other["lengths"]:
        raise ValueError(f"the reports are not on the same cases: {base['num_captions']} against "
                         f"{other['num_captions']} captions, lengths {base['lengths']} against {other['lengths']}.")
    out = {}
    for k, a in base[mode]["per_video"].items():
        if k not in other[mode]["per_video"]:
            continue
        a = np.array(a, np.float64)  # None -> NaN
        d = np.array(other[mode]["per_video"][k], np.float64) - a
        d = d[np.isfinite(d)]
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[k] = {"gap": float(d.mean()) if len(d) else float("nan"), "se": se, "n": int(len(d))}
    return out


def text_to_video_scores(comps, params, config, key) -> dict:
    """The scores a shapes-world training run ends with (its `eval.json`): text-to-video only, no drift.

    Videos for the captions of the first `config.eval.num_videos` test-split
    examples, `config.eval.num_frames` long, `config.eval.batch` at a time
    (batch at `start` keyed `fold_in(key, start)`), with the run's sampler at
    `config.eval.num_steps` DDIM steps; the means of `shapes_score.score_batch`.
    Text-to-video has no true start position: position scores are NaN and left out.
    """
    from artv_jax import generate

    e = config.eval
    sample_config = config.sample.copy_and_resolve_references()
    sample_config.num_steps = e.num_steps
    sampler = generate.make_sampler(comps, sample_config, config.model)
    captions = [shapes.generate_example("test", k, config.data.size, config.data.num_frames)["caption"]
                for k in range(e.num_videos)]
    videos = generate.generate_all(comps, params, sampler, captions, e.num_frames, key, batch=e.batch)
    return _finite(shapes_score.score_batch(videos, captions))


def _finite(scores: dict) -> dict:
    """The scalar, finite scores, as floats."""
    return {k: float(v) for k, v in scores.items() if np.isscalar(v) and np.isfinite(v)}


def drift_plot(report: dict, path: str, width: int = 1200, height: int = 300) -> None:
    """A PNG: clean frames, frame accuracy, colour distance and position error (px from the track started at
    the object's own frame-0 position) against frame index, one line per mode."""
    from PIL import Image, ImageDraw

    colours = {"t2v": (200, 40, 40), "i2v": (40, 90, 200)}
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [("clean frames", "clean", 1.0), ("frame accuracy", "frame_ok", 1.0),
              ("colour distance", "colour_distance", None), ("position error (px)", "track_error", None)]
    pw = width // len(panels)
    for p, (title, key, top) in enumerate(panels):
        x0, y0, x1, y1 = p * pw + 40, 20, (p + 1) * pw - 10, height - 30
        series = {m: np.asarray(report[m]["curves"][key], float) for m in ROLLOUTS if m in report}
        if top is None:
            top = max([1e-6] + [float(np.nanmax(s)) * 1.05 for s in series.values() if np.isfinite(s).any()])
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, 4), title, fill="black")
        draw.text((x0 - 36, y0), f"{top:.3g}", fill="black")
        draw.text((x0 - 12, y1 - 10), "0", fill="black")
        for m, s in series.items():
            n = len(s)
            draw.text((x1 - 30, y1 + 6), str(n), fill="black")
            points = [(x0 + (x1 - x0) * i / max(1, n - 1), y1 - (y1 - y0) * min(v, top) / top)
                      for i, v in enumerate(s) if np.isfinite(v)]
            if len(points) > 1:
                draw.line(points, fill=colours[m], width=2)
            draw.text((x0 + 6, y0 + 6 + 12 * list(series).index(m)), m, fill=colours[m])
    image.save(path)


def contact_sheet(videos: dict, path: str, rows: int = 6, columns: int = 16, scale: int = 2) -> None:
    """A PNG: for each mode, `rows` rollouts with `columns` frames spread over their length."""
    from PIL import Image

    from artv_jax import video_io

    sheets = []
    for v in videos.values():
        idx = np.linspace(0, v.shape[1] - 1, min(columns, v.shape[1])).round().astype(int)
        sheets.append(video_io.contact_sheet(v[:rows, idx]))
    gap = np.full((4, sheets[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([x for s in sheets for x in (s, gap)][:-1])
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST).save(path)


def with_sampling(config, **overrides):
    """A copy of a run's config with the given `sample` settings (None: the run's own), checked by `validate`."""
    from artv_jax import config as config_lib

    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        if value is not None:
            config.sample[key] = type(config.sample[key])(value)
    return config_lib.validate(config)


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    if FLAGS.compare:
        return compare_main(FLAGS.compare)
    with runs.usage_errors("artv_jax.evaluate"):
        if not FLAGS.workdir:
            raise runs.UsageError("give --workdir (a training run).")
        lengths = check_options(FLAGS.captions, FLAGS.lengths, FLAGS.modes)  # before the model loads
        comps, params, config = runs.load(FLAGS.workdir, FLAGS.step)
        config = with_sampling(config, ref_guidance=FLAGS.ref_guidance, history_level=FLAGS.history_level)
        report, videos = evaluate(comps, params, config, num_captions=FLAGS.captions, lengths=lengths,
                                  modes=FLAGS.modes, steps=FLAGS.steps, batch=FLAGS.batch, seed=FLAGS.seed)
    out = FLAGS.out or storage.join(storage.resolve(FLAGS.workdir), "evaluation")
    storage.write_text(storage.join(out, "report.json"), json.dumps(report, indent=1))
    with storage.local_file(storage.join(out, "drift.png")) as path:
        drift_plot(report, path)
    with storage.local_file(storage.join(out, "samples.png")) as path:
        contact_sheet(videos, path)
    for mode in FLAGS.modes:
        for n, s in report[mode]["by_length"].items():
            if mode == "tf":
                print(f"tf  {n:>4s} frames: travel {s['travel_accuracy']:.3f} (first {s['travel_first']:.3f}, "
                      f"bounce {s['travel_bounce']:.3f} of {s['num_bounces']:.0f}, straight "
                      f"{s['travel_straight']:.3f})  position error {s['position_error']:.2f} px  on position "
                      f"{s['on_position']:.3f}  clean {s['clean_fraction']:.3f}")
                continue
            print(f"{mode} {n:>4s} frames: all {s['all_accuracy']:.3f}  colour {s['colour_accuracy']:.3f}  "
                  f"shape {s['shape_accuracy']:.3f}  direction {s['direction_accuracy']:.3f}  "
                  f"background {s['background_accuracy']:.3f}  frame {s['frame_accuracy']:.3f}  "
                  f"clean {s['clean_fraction']:.3f} (last quarter {s['clean_last_quarter']:.3f})  "
                  f"on track {s['track_accuracy']:.3f}  travel {s.get('travel_accuracy', float('nan')):.3f}")
    print(f"wrote {out}/report.json, drift.png, samples.png")


def compare_main(paths) -> None:
    """`--compare=BASE,OTHER`: prints `paired_gaps` of two report.json files for each mode both hold."""
    with runs.usage_errors("artv_jax.evaluate", OSError, json.JSONDecodeError):
        if len(paths) != 2:
            raise runs.UsageError(f"--compare takes two report.json paths (BASE,OTHER), got {len(paths)}.")
        base, other = (json.loads(storage.read_text(p)) for p in paths)
        modes = [m for m in ROLLOUTS if m in base and m in other]
        if not modes:
            raise runs.UsageError(f"{paths[0]} and {paths[1]} hold no rollout mode (t2v, i2v) in common.")
        gaps = {m: paired_gaps(base, other, m) for m in modes}
    print(f"{paths[1]} - {paths[0]}, paired over {base['num_captions']} videos, {base['lengths'][-1]} frames "
          "(* beyond 2 s.e.):")
    for m, rows in gaps.items():
        for k, g in rows.items():
            mark = "*" if abs(g["gap"]) > 2 * g["se"] else " "
            print(f"{m} {k:<20s} {g['gap']:+8.3f} ± {g['se']:.3f} {mark} (n = {g['n']})")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", "", "A training run's workdir (local or gs://).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("captions", 144, "How many of the 144 captions (spread evenly).")
    flags.DEFINE_list("lengths", ["16", "64", "256"], "Rollout lengths scored (frames).")
    flags.DEFINE_list("modes", list(ROLLOUTS), "t2v (text-to-video), i2v (image-to-video) and/or tf (teacher-forced: "
                      "each frame from the true frames before it, the one-step skill without the rollout's drift).")
    flags.DEFINE_integer("steps", None, "DDIM steps per frame (default: the training config's).")
    flags.DEFINE_float("ref_guidance", None, "History guidance weight (1: off; default: the training config's).")
    flags.DEFINE_float("history_level", None, "History guidance's weaker history: 1 none, below it the references "
                       "noised to this level (default: the training config's).")
    flags.DEFINE_integer("batch", 48, "Videos generated together.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("out", "", "Output directory (default <workdir>/evaluation).")
    flags.DEFINE_list("compare", [], "BASE,OTHER: two report.json files on the same captions; prints OTHER - BASE "
                      "per score, paired video by video, with standard errors (no model is loaded).")


if __name__ == "__main__":
    runs.run("artv_jax.evaluate", main, _define_flags)
