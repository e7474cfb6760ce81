"""The COCO panoptic train step on the old fixed canvas and on the two orientation canvases, one run.

    python -m benchmarks.coco_canvas [--config configs/coco_panoptic_r50.py] --config.batch_size=1 \
        --config.loss.max_targets=20 [--config.model.dtype=bfloat16] [--steps 3] [--image 800,1066]

Old: every image padded to 1344x1344 with the padding counted (grey pixels, negatives in the mask
losses, attended to). New: a landscape 800x1344 or a portrait 1344x800 canvas (from the config's
resize limits) with the padding absent (`dataset.padding`). The same image size (default 800x1066,
COCO's typical 480x640 after the resize to a short side of 800) is placed on each canvas, its
transpose on the portrait one. Printed per canvas: compile seconds, median ms per step, images/s,
and the ratio to the old canvas.
"""

import copy
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from benchmarks.compare import ROOT
from maskformer_jax import cli
from maskformer_jax.data.transforms import training_canvases
from maskformer_jax.devices import make_mesh
from maskformer_jax.errors import ConfigError
from maskformer_jax.models import build_model
from maskformer_jax.training.optimizer import build_optimizer
from maskformer_jax.training.state import create_train_state, init_train_state, state_sharding
from maskformer_jax.training.step import global_batch, jit_train_step


def batch_on_canvas(batch_size, image, canvas, targets, num_classes, seed=0):
    """A block segmentation of `targets` segments per image of size `image`, on `canvas`."""
    rng = np.random.default_rng(seed)
    segments = np.full((batch_size, *canvas), -1, np.int32)
    blocks = rng.integers(0, targets, size=(batch_size, image[0] // 32 + 1, image[1] // 32 + 1))
    segments[:, :image[0], :image[1]] = blocks.repeat(32, 1).repeat(32, 2)[:, :image[0], :image[1]]
    valid = np.zeros((batch_size, *canvas), bool)
    valid[:, :image[0], :image[1]] = True
    return {
        "image": rng.integers(0, 256, size=(batch_size, *canvas, 3), dtype=np.uint8),
        "valid": valid,
        "segments": segments,
        "labels": rng.integers(0, num_classes, size=(batch_size, targets)).astype(np.int32),
    }


def main(argv):
    config, name = _CONFIG.value, config_flags.get_config_filename(FLAGS["config"])
    batch_size, targets = config.batch_size, config.loss.max_targets
    image = tuple(int(side) for side in FLAGS.image)
    canvases = training_canvases(config.dataset)
    if len(canvases) != 2:
        raise ConfigError(f"{name} trains on one canvas; this benchmark compares the DETR recipe's two "
                          "(a COCO panoptic config)")
    landscape, portrait = canvases
    runs = [("old: 1344x1344, padding counted", "counted", (1344, 1344), image),
            (f"new: {landscape[0]}x{landscape[1]}, padding absent", "absent", landscape, image),
            (f"new: {portrait[0]}x{portrait[1]}, padding absent", "absent", portrait, image[::-1])]
    print(f"{name}, batch {batch_size}, {config.model.dtype}, image {image[0]}x{image[1]}, {targets} targets, "
          f"{jax.devices()[0].device_kind}", flush=True)
    results = []
    for name, padding, canvas, size in runs:
        config = copy.deepcopy(_CONFIG.value)
        config.dataset.padding = padding
        model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
        create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
        sharding = state_sharding(jax.eval_shape(create), mesh)
        state = init_train_state(create, sharding)
        jax.clear_caches()  # the initialising program's host memory is not the step's
        batch = global_batch(batch_on_canvas(batch_size, size, canvas, targets, config.model.num_classes), mesh)
        with jax.set_mesh(mesh):
            start = time.perf_counter()
            step = jit_train_step(config, model, optimizer, mesh, sharding).lower(state, batch).compile()
            compile_seconds = time.perf_counter() - start
            state, metrics = step(state, batch)  # warm-up
            jax.block_until_ready(metrics)
            times = []
            for _ in range(FLAGS.steps):
                start = time.perf_counter()
                state, metrics = step(state, batch)
                jax.block_until_ready(metrics)
                times.append(1e3 * (time.perf_counter() - start))
        milliseconds = float(np.median(times))
        results.append(milliseconds)
        print(f"{name:38s} compile {compile_seconds:6.1f} s | {milliseconds:9.1f} ms/step | "
              f"{1e3 * batch_size / milliseconds:7.2f} img/s | x{milliseconds / results[0]:.2f} of the old canvas",
              flush=True)
        del state, step, batch
        jax.clear_caches()


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag(str(ROOT / "configs" / "coco_panoptic_r50.py"))
    flags.DEFINE_integer("steps", 3, "Timed steps per canvas (the median is printed).")
    flags.DEFINE_list("image", ["800", "1066"], "Image height,width placed on each canvas (transposed on the portrait one).")
    cli.run(main)
