"""Examples/s of the training input pipeline on the built-in synthetic set, by worker count.

    python benchmarks/input_pipeline.py [--batches 20]

"ADE20K-style": the semantic recipe (resize 0.5-2.0x, 512x512 crop, colour jitter, flip, pad) on
640x512 synthetic scenes. "COCO-style": the DETR recipe (flip, resize or resize-crop-resize, pad to
1344x1344) on 640x480 scenes, panoptic targets.
"""

import argparse
import sys
import time
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import ade20k_r50, coco_panoptic_r50  # noqa: E402
from maskformer_jax.data.pipeline import train_pipeline  # noqa: E402
from maskformer_jax.data.synthetic import SyntheticSource  # noqa: E402


def examples_per_second(config, source, workers: int, batches: int) -> float:
    config.dataset.num_workers = workers
    iterator = iter(train_pipeline(config, source, 0, 1))
    try:
        next(iterator)  # start-up (worker processes) is not timed
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return batches * config.batch_size / (time.perf_counter() - start)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    flags.FLAGS(sys.argv[:1])  # grain worker processes read absl flags
    settings = [
        ("ADE20K-style 512 crops", ade20k_r50.get_config(), SyntheticSource(10_000, (512, 640))),
        ("COCO-style DETR recipe", coco_panoptic_r50.get_config(), SyntheticSource(10_000, (480, 640))),
    ]
    print(f"examples/s over {args.batches} batches of {args.batch_size}")
    print(f"{'recipe':<26}{'workers':>8}{'examples/s':>12}{'per worker':>12}")
    for name, config, source in settings:
        config.batch_size, config.model.num_classes = args.batch_size, 7
        for workers in (0, 1, 2):
            rate = examples_per_second(config, source, workers, args.batches)
            per_worker = f"{rate / workers:>12.1f}" if workers else f"{'-':>12}"
            print(f"{name:<26}{workers:>8}{rate:>12.1f}{per_worker}")


if __name__ == "__main__":
    main()
