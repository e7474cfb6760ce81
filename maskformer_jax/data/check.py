"""Scan a dataset split and report what training would trip over.

    python -m maskformer_jax.data.check --config configs/ade20k_r50.py --config.dataset.root=/data --split train

Prints the number of examples, a class histogram (images and pixels per class), the most targets in
one image, and every unreadable or inconsistent file (missing files, image/label size mismatch,
label values outside the classes, more targets than config.loss.max_targets). Exits 1 if any (after
listing them all), 2 for a config that cannot work (one line, as the other commands).
"""

import sys

import numpy as np
from absl import flags

from maskformer_jax import cli
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.data.pipeline import build_source
from maskformer_jax.errors import DataError
from maskformer_jax.data.targets import make_targets

def check(config, split: str, out=None) -> int:
    """Scan the split, print the report to `out` (stdout); returns the number of problems found."""
    out = out or sys.stdout
    try:
        source = build_source(config.dataset, split, strict=False)
    except DataError as error:
        print(f"cannot open the {split} split of {config.dataset.name!r}: {error}", file=out)
        return 1
    num_classes = config.model.num_classes
    images_per_class, pixels_per_class = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    problems, most_targets, most_targets_image = [], 0, None
    for index in range(len(source)):
        try:
            example = source[index]
            targets = make_targets(example, config.dataset.target_mode, config.loss.max_targets)
        except DataError as error:
            problems.append(str(error))
            continue
        count = int((targets["labels"] >= 0).sum())
        if count > most_targets:
            most_targets, most_targets_image = count, example["image_id"]
        classes = example["classes"][example["segments"][example["segments"] >= 0]]
        if classes.size and classes.max() >= num_classes:
            problems.append(f"image {example['image_id']}: class {int(classes.max())} >= {num_classes} classes")
            continue
        pixels = np.bincount(classes, minlength=num_classes)
        pixels_per_class += pixels
        images_per_class += pixels > 0
        if (index + 1) % 500 == 0:
            print(f"  {index + 1}/{len(source)} examples read, {len(problems)} problems", file=out)

    names = dataset_metadata(config.dataset, source).class_names
    print(f"{config.dataset.name} {split}: {len(source)} examples, {len(problems)} problems", file=out)
    print(f"most targets in one image: {most_targets} ({most_targets_image}); "
          f"config.loss.max_targets = {config.loss.max_targets}", file=out)
    print(f"{'class':<6}{'name':<24}{'images':>10}{'pixels':>16}", file=out)
    for k in range(num_classes):
        name = names[k] if k < len(names) else ""
        print(f"{k:<6}{name:<24}{images_per_class[k]:>10}{pixels_per_class[k]:>16}", file=out)
    for problem in problems:
        print(f"PROBLEM {problem}", file=out)
    return len(problems)


def main(argv):
    cli.check_config(_CONFIG.value, training=False)
    sys.exit(1 if check(_CONFIG.value, FLAGS.split) else 0)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag()
    flags.DEFINE_enum("split", "train", ["train", "validation"], "Split to scan.")
    flags.mark_flag_as_required("config")
    cli.run(main)
