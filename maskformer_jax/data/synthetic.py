"""A built-in synthetic dataset: no download, deterministic from (seed, index), learnable, not trivial.

Each scene has two or three textured "stuff" regions split by wavy boundaries and 1-6 overlapping
"thing" instances of three shapes, with class-typical but jittered colours, random sizes, occlusion
and pixel noise. Classes: stuff 0 sky, 1 grass, 2 wall, 3 water; things 4 disc, 5 box, 6 triangle.
"""

import pathlib

import numpy as np
from absl import flags
from PIL import Image

from maskformer_jax import cli
from maskformer_jax.errors import ConfigError

CLASS_NAMES = ("sky", "grass", "wall", "water", "disc", "box", "triangle")
THING_CLASSES = (4, 5, 6)
# Base colours (RGB) of each class; instances and textures vary around them. Also the classes' colours
# in pictures (CLASS_COLORS), so that grass is drawn green and water blue.
_COLOURS = np.array(
    [[120, 170, 235], [70, 150, 60], [170, 150, 130], [40, 90, 160], [220, 60, 50], [240, 200, 40], [150, 70, 200]],
    np.float32,
)
CLASS_COLORS = _COLOURS.astype(np.uint8)


def _texture(rng, name, height, width):
    """[H, W] float texture in about [-1, 1] typical of a stuff class."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if name == "sky":  # smooth vertical gradient
        return (y / height - 0.5) * 1.5
    if name == "grass":  # fine vertical streaks
        return np.sin(x * rng.uniform(0.8, 1.2) + phase) * 0.6 + rng.normal(0, 0.4, (height, width))
    if name == "wall":  # bricks
        brick_h, brick_w = rng.integers(6, 10), rng.integers(12, 20)
        offset = (np.floor(y / brick_h) % 2) * brick_w / 2
        mortar = ((y % brick_h) < 1.5) | (((x + offset) % brick_w) < 1.5)
        return np.where(mortar, -1.0, 0.3)
    return np.sin((x * 0.15 + np.sin(y * 0.3 + phase) * 2)) * 0.8  # water: waves


def _thing_mask(rng, shape_class, height, width):
    """A random disc, box or triangle: bool [H, W]."""
    size = rng.uniform(0.12, 0.45) * min(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if shape_class == 4:
        return (y - cy) ** 2 + (x - cx) ** 2 <= (size / 2) ** 2
    if shape_class == 5:
        aspect = rng.uniform(0.6, 1.6)
        return (np.abs(y - cy) <= size / 2 * aspect) & (np.abs(x - cx) <= size / 2 / aspect)
    top = cy - size / 2  # upright triangle with its apex at the top
    depth = (y - top) / size
    return (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= depth * size / 2)


class SyntheticSource:
    """Random-access synthetic scenes with panoptic annotations (see the module docstring)."""

    class_names = CLASS_NAMES
    thing_classes = THING_CLASSES
    labels_instances = True

    def __init__(self, num_examples: int = 1000, image_size=(128, 128), seed: int = 0):
        self.num_examples, self.image_size, self.seed = num_examples, tuple(image_size), seed

    def __len__(self):
        return self.num_examples

    def image_shapes(self) -> list[tuple[int, int]]:
        return [self.image_size] * self.num_examples

    def __getitem__(self, index):
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic examples")
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        image = np.zeros((height, width, 3), np.float32)
        segments = np.full((height, width), -1, np.int32)
        classes = []

        # Stuff: a top region and a bottom region split by a wavy horizon, sometimes a third band.
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        horizon = height * rng.uniform(0.3, 0.7) + np.sin(x / width * rng.uniform(2, 8) + rng.uniform(0, 6)) * height * 0.08
        regions = [y < horizon, y >= horizon]
        stuff = [int(rng.choice([0, 2])), int(rng.choice([1, 3]))]
        if rng.random() < 0.4:
            band = (y >= horizon) & (y < horizon + height * rng.uniform(0.1, 0.25))
            regions = [regions[0], band, regions[1] & ~band]
            stuff = [stuff[0], 3 if stuff[1] == 1 else 1, stuff[1]]
        for region, class_id in zip(regions, stuff):
            if not region.any():
                continue
            colour = _COLOURS[class_id] * rng.uniform(0.85, 1.15)
            texture = _texture(rng, CLASS_NAMES[class_id], height, width)[..., None]
            image[region] = (colour + 30 * texture)[region]
            segments[region] = len(classes)
            classes.append(class_id)

        # Things, painted in order: later instances occlude earlier ones.
        for _ in range(rng.integers(1, 7)):
            class_id = int(rng.choice(THING_CLASSES))
            mask = _thing_mask(rng, class_id, height, width)
            if mask.sum() < 16:
                continue
            colour = np.clip(_COLOURS[class_id] + rng.normal(0, 25, 3), 0, 255)
            shading = 1 - 0.3 * (y - y[mask].min()) / max(1.0, np.ptp(y[mask]))
            image[mask] = (colour * shading[..., None])[mask]
            segments[mask] = len(classes)
            classes.append(class_id)

        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        present = np.unique(segments[segments >= 0])  # drop fully occluded instances
        remap = np.full(len(classes) + 1, -1, np.int32)
        remap[present] = np.arange(len(present))
        return {
            "image": image,
            "segments": remap[segments],
            "classes": np.asarray(classes, np.int32)[present],
            "iscrowd": np.zeros(len(present), bool),
            "image_id": f"synthetic_{self.seed}_{index}",
        }


def main(argv):
    """Write scenes of the built-in validation set as PNG files (inputs to try predict.py on)."""
    output, count = pathlib.Path(FLAGS.output), FLAGS.count
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    output.mkdir(parents=True, exist_ok=True)
    source = SyntheticSource(count, seed=1)  # the validation scenes (seed 1), as build_source gives them
    for index in range(count):
        Image.fromarray(source[index]["image"]).save(output / f"scene_{index}.png")
    print(f"wrote {count} scenes to {output}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("output", None, "Folder for the PNG files.")
    flags.DEFINE_integer("count", 4, "How many scenes.")
    flags.mark_flag_as_required("output")
    cli.run(main)
