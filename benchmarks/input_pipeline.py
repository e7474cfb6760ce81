"""The training input pipeline on real files: examples/s per core by worker count, and CPU ms per stage.

    python -m benchmarks.input_pipeline [--images 48] [--batches 12] [--batch_size 8] [--workers 0,1,2]

Writes JPEG images (quality 90) and PNG labels in the released layouts to a temporary folder: ADE20K
(ADEChallengeData2016, ~683x512 scenes, 150 classes) and COCO panoptic (train2017 + panoptic JSON
and PNGs, ~640x480), from the built-in synthetic scenes, and reads them with the real sources and
recipes (ADE20K: resize, 512x512 crop, colour jitter, flip, pad; COCO: the DETR recipe on its
orientation canvases). Per core = examples per second of CPU time of this process and its workers,
so it does not depend on how many cores the machine has. The stage table times each step of one
example in this process (decode, resize, crop, jitter, flip, pad, targets).
"""

import json
import os
import pathlib
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from configs import ade20k_r50, coco_panoptic_r50
from maskformer_jax import cli
from maskformer_jax.data import sources, transforms
from maskformer_jax.data.pipeline import train_pipeline
from maskformer_jax.data.synthetic import SyntheticSource
from maskformer_jax.data.targets import make_targets  # noqa: E402


def write_ade20k(root: pathlib.Path, count: int):
    images, labels = root / "ADEChallengeData2016/images/training", root / "ADEChallengeData2016/annotations/training"
    images.mkdir(parents=True), labels.mkdir(parents=True)
    scenes = SyntheticSource(count, (512, 683), seed=3)
    for i in range(count):
        scene = scenes[i]
        Image.fromarray(scene["image"]).save(images / f"ADE_train_{i:08d}.jpg", quality=90)
        label = np.where(scene["segments"] >= 0, 1 + (scene["classes"][scene["segments"]] * 21) % 150, 0)
        Image.fromarray(label.astype(np.uint8)).save(labels / f"ADE_train_{i:08d}.png")
    return sources.ade20k_source(root, "train")


def write_coco(root: pathlib.Path, count: int):
    (root / "train2017").mkdir(parents=True), (root / "annotations/panoptic_train2017").mkdir(parents=True)
    scenes = SyntheticSource(count, (480, 640), seed=4)
    images, annotations = [], []
    for i in range(count):
        scene = scenes[i]
        Image.fromarray(scene["image"]).save(root / f"train2017/{i:012d}.jpg", quality=90)
        ids = np.where(scene["segments"] >= 0, scene["segments"] + 1, 0)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"annotations/panoptic_train2017/{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640})
        annotations.append({"image_id": i, "file_name": f"{i:012d}.png", "segments_info": [
            {"id": s + 1, "category_id": int(c) + 1, "iscrowd": 0} for s, c in enumerate(scene["classes"])]})
    categories = [{"id": c + 1, "name": f"class {c}", "isthing": int(c >= 4)} for c in range(133)]
    (root / "annotations/panoptic_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return sources.coco_panoptic_source(root, "train")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its live descendants (grain's workers), from /proc."""
    ticks, parents, times = os.sysconf("SC_CLK_TCK"), {}, {}
    for entry in (p for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    ours, changed = {os.getpid()}, True
    while changed:  # descendants: add children of what is ours until nothing changes
        children = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= children
        changed = bool(children)
    return sum(times[pid] for pid in ours)


def rate_per_core(config, source, workers: int, batches: int) -> tuple[float, float]:
    """(examples per wall second, examples per CPU second of this process and its workers)."""
    config.dataset.num_workers = workers
    iterator = iter(train_pipeline(config, source, 0, 1))
    try:
        next(iterator)  # start-up (worker processes, first reads) is not timed
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            next(iterator)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    finally:
        iterator.close()
    return batches * config.batch_size / wall, batches * config.batch_size / max(cpu, 1e-9)


def stage_times(name: str, source, dataset, count: int) -> dict:
    """Mean CPU ms of each stage over `count` examples, in this process."""
    totals, rng = {}, np.random.default_rng(0)

    def timed(stage, fn, *args):
        start = time.process_time()
        out = fn(*args)
        totals[stage] = totals.get(stage, 0.0) + 1e3 * (time.process_time() - start)
        return out

    for index in range(count):
        example = timed("decode", source.__getitem__, index)
        if name == "ade20k":
            example = timed("resize", transforms.resize_shortest_edge, example, rng, dataset.min_size_train,
                            dataset.max_size_train, "torch")
            example = timed("crop", transforms.random_crop, example, rng, dataset.image_size,
                            dataset.single_category_max_area, example["classes"])
            example = timed("jitter", transforms.color_jitter_ssd, example, rng)
            example = timed("flip", transforms.horizontal_flip, example, rng)
            example = timed("pad", transforms.pad, example, dataset.image_size)
        else:
            height, width = example["image"].shape[:2]
            plan = timed("plan", transforms.plan_detr, [height], [width], rng, dataset)
            plan = {key: value[0] for key, value in plan.items()}
            example = timed("resize+crop", transforms.detr_apply, example, plan)
            canvas = transforms.training_canvases(dataset)[int(transforms.orientation(*plan["size"]))]
            example = timed("pad", transforms.pad, example, canvas)
        timed("targets", make_targets, example, dataset.target_mode, 100)
    return {stage: total / count for stage, total in totals.items()}


def main(argv):
    args = FLAGS
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        settings = [("ade20k", ade20k_r50.get_config(), write_ade20k(folder / "ade", args.images)),
                    ("coco", coco_panoptic_r50.get_config(), write_coco(folder / "coco", args.images))]
        print(f"{os.cpu_count()} cores; {args.batches} batches of {args.batch_size}; per core = per CPU second")
        print(f"{'recipe':<8}{'workers':>8}{'examples/s':>12}{'per core':>10}")
        for name, config, source in settings:
            config.batch_size = args.batch_size
            for workers in map(int, args.workers):
                rate, per_core = rate_per_core(config, source, workers, args.batches)
                print(f"{name:<8}{workers:>8}{rate:>12.1f}{per_core:>10.1f}", flush=True)
        for name, config, source in settings:
            stages = stage_times(name, source, config.dataset, min(args.images, 24))
            print(f"{name} CPU ms per example: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                  + f"; total {sum(stages.values()):.1f} ({1e3 / sum(stages.values()):.0f} examples/s per core)")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_integer("images", 48, "Files written per dataset.")
    flags.DEFINE_integer("batches", 12, "Batches read per setting.")
    flags.DEFINE_integer("batch_size", 8, "Examples per batch.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
    cli.run(main)
