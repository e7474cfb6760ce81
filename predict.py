"""Segment images and save pictures of the predictions.

    python predict.py --config configs/X.py --checkpoint PATH --output DIR IMAGE_OR_FOLDER [...]

For each image, DIR/<stem>.png (<stem>_<suffix>.png where inputs share a stem) shows the
prediction (config.inference.task) over the image in the dataset's palette (ADE20K's, COCO's, the
synthetic set's; a fixed one otherwise), with segment outlines and a legend of the classes present;
instances of one thing class get distinct shades of the class colour, and instances with a score
of at most 0.5 or less than 0.2% of the image visible are left out. Small images are drawn
enlarged. PATH is a workdir, its checkpoints/ folder, or one step's folder.
"""

import collections
import pathlib

import numpy as np
from absl import flags

from maskformer_jax import cli, visualize
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.data.sources import IMAGE_SUFFIXES, read_image
from maskformer_jax.errors import ConfigError
from maskformer_jax.evaluation import Predictor
from maskformer_jax.models import build_model
from maskformer_jax.files import write_png

# Instances drawn in the pictures: score above this, and at least this share of the image visible.
INSTANCE_SCORE_THRESHOLD, INSTANCE_MIN_AREA = 0.5, 0.002


def image_paths(inputs) -> list[pathlib.Path]:
    """Files as given, folders expanded to their images (sorted); an error names what is missing."""
    paths = []
    for item in map(pathlib.Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    return paths


def picture(image, prediction, metadata, task: str):
    """The drawing of one prediction (Predictor.predict's output) over its image, in the dataset's palette."""
    names, things, colours = metadata.class_names, np.nonzero(metadata.is_thing)[0], metadata.colors
    if task == "panoptic":
        classes = np.maximum(prediction["segment_classes"], 0)
        return visualize.draw_segmentation(image, prediction["segment_map"], classes, names, things, class_colours=colours)
    if task == "instance":
        instances = prediction["instances"]
        keep = np.nonzero(instances["kept"] & (instances["scores"] > INSTANCE_SCORE_THRESHOLD))[0]
        segment_map = np.full(image.shape[:2], -1, np.int32)
        for i in keep[::-1]:  # the best-scoring instance drawn last, on top
            segment_map[instances["masks"][i]] = i
        visible = np.bincount(segment_map.ravel() + 1, minlength=len(instances["classes"]) + 1)[1:]
        segment_map[(segment_map >= 0) & (visible < INSTANCE_MIN_AREA * segment_map.size)[segment_map]] = -1
        return visualize.draw_segmentation(image, segment_map, instances["classes"], names, instances["classes"],
                                           class_colours=colours)
    return visualize.draw_segmentation(image, prediction["semantic_map"], np.arange(len(names)), names,
                                       class_colours=colours)


def picture_names(paths) -> list[str]:
    """<stem>.png per input; inputs that share a stem (a.jpg, a.png) keep their suffix (a_jpg.png),
    and any name still shared gets the input's position, so that no picture overwrites another."""
    stems = collections.Counter(path.stem for path in paths)
    names = [path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}" for path in paths]
    counts = collections.Counter(names)
    return [f"{name}_{index}.png" if counts[name] > 1 else f"{name}.png" for index, name in enumerate(names)]


def predict_files(config, checkpoint, inputs, output) -> list[pathlib.Path]:
    """Write one picture per input image into `output`; returns their paths."""
    paths = image_paths(inputs)
    cli.check_config(config, training=False)
    model = build_model(config.model)
    metadata = dataset_metadata(config.dataset)
    predictor = Predictor(config, model, metadata)
    variables = predictor.load(checkpoint)
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (path, name) in enumerate(zip(paths, picture_names(paths))):
        image = read_image(path)
        prediction = predictor.predict(variables, image)
        target = output / name
        write_png(target, picture(image, prediction, metadata, config.inference.task))
        written.append(target)
        print(f"[{index + 1}/{len(paths)}] {path} → {target}", flush=True)
    return written


def main(argv):
    if len(argv) < 2:
        raise ConfigError("no images: give image files or folders after the flags")
    predict_files(_CONFIG.value, FLAGS.checkpoint, argv[1:], FLAGS.output)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag()
    flags.DEFINE_string("checkpoint", None, "A workdir, its checkpoints/ folder or one step's folder.")
    flags.DEFINE_string("output", None, "Folder for the pictures.")
    flags.mark_flags_as_required(["config", "checkpoint", "output"])
    cli.run(main, arguments=True)
