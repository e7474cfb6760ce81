"""The model on images of any size: resizing, padding to one batch size, sliding windows, test-time
augmentation, and post-processing to the original size (docs/reference.md §4).

`Predictor(config, model, metadata)`; `predict(variables, image)` for one image, `predict_views`
for a batch of resized views of one padded size. Each (padded size, canvas size) compiles once. The
variables are read from a checkpoint with `load`, or taken from a training run (`variables_here`).
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from maskformer_jax import postprocessing
from maskformer_jax.data import transforms
from maskformer_jax.devices import compiler_options, make_mesh
from maskformer_jax.errors import ConfigError
from maskformer_jax.models import abstract_variables, normalize
from maskformer_jax.resize import clamp_to_extent, downsample_valid, resize_bilinear, valid_extent
from maskformer_jax.training.checkpoint import load_weights, with_shardings

TASKS = ("semantic", "panoptic", "instance")


def validate(config: ml_collections.ConfigDict):
    """Errors that name the config key, before any work."""
    task, evaluation = config.inference.task, config.eval
    if task not in TASKS:
        raise ConfigError(f"config.inference.task must be one of {TASKS}, got {task!r}")
    if (evaluation.tta or evaluation.sliding_window) and task != "semantic":
        raise ConfigError("config.eval.tta and config.eval.sliding_window apply to config.inference.task "
                         f"'semantic' only (the reference has no panoptic test-time augmentation), got {task!r}")
    if evaluation.tta and not evaluation.tta_sizes:
        raise ConfigError("config.eval.tta needs config.eval.tta_sizes")
    if evaluation.batch_size < 1:
        raise ConfigError(f"config.eval.batch_size must be positive, got {evaluation.batch_size}")
    instances_json = pathlib.Path(config.dataset.root) / config.dataset.instances_json
    if task == "instance" and config.dataset.instances_json and not instances_json.is_file():
        raise ConfigError(f"config.dataset.instances_json: {instances_json} not found; it is read relative to "
                          "config.dataset.root (e.g. annotations/instances_val2017.json), or leave it empty")


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start of each sliding window along one axis: every `stride`, the last one flush with the end."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


class Predictor:
    """The model and the reference's inference on images of any size (config.inference.task).

    `predict(variables, image)` → numpy maps at the image's size; batches of one padded size go
    through `predict_views`, one compiled program per (padded size, canvas size).
    """

    def __init__(self, config: ml_collections.ConfigDict, model, metadata, devices=None):
        """devices: where it runs, by default this process's (e.g. devices.tpu_topology to compile only)."""
        validate(config)
        self.config, self.model, self.metadata = config, model, metadata
        self.num_classes = config.model.num_classes
        if len(metadata.class_names) != self.num_classes:
            raise ConfigError(f"the {config.dataset.name!r} data has {len(metadata.class_names)} classes but "
                              f"config.model.num_classes is {self.num_classes}")
        self.task = config.inference.task
        self.padding_absent = transforms.padding_absent(config.dataset)
        self.mesh = make_mesh(jax.local_devices() if devices is None else devices)
        self._predict = jax.jit(self._predict_fn, static_argnames=("canvas", "instances"),
                                compiler_options=compiler_options(self.mesh.devices.flat[0].platform))

    # ---- on device ----

    def _forward(self, variables, images, sizes):
        """Last-layer class logits [B, Q, K+1] and mask logits upsampled to the padded input [B, Q, H, W].
        Where training padding is absent, so is this padding: the model gets each image's valid mask."""
        height, width = images.shape[1:3]
        inside = postprocessing.canvas_mask(sizes, (height, width))
        valid = inside if self.padding_absent else None
        outputs = self.model.apply(variables, normalize(images, inside), valid)
        masks = outputs["mask_logits"][-1].astype(jnp.float32)
        if valid is not None:  # upsampled as maps of the image's own size
            masks = clamp_to_extent(masks, valid_extent(downsample_valid(valid, *masks.shape[2:])))
        masks = resize_bilinear(masks, height, width)
        return outputs["class_logits"][-1], masks

    def _sliding_window(self, variables, images, sizes):
        """Semantic scores [B, K, H, W] averaged over dataset.image_size windows."""
        window = tuple(self.config.dataset.image_size)
        stride = tuple(self.config.eval.window_stride) or tuple(max(1, 2 * w // 3) for w in window)
        height, width = images.shape[1:3]
        x = normalize(images, postprocessing.canvas_mask(sizes, (height, width)))
        padded = (max(height, window[0]), max(width, window[1]))
        x = jnp.pad(x, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)))
        offsets = [(y, x0) for y in window_offsets(padded[0], window[0], stride[0])
                   for x0 in window_offsets(padded[1], window[1], stride[1])]
        crops = jnp.concatenate([x[:, y:y + window[0], x0:x0 + window[1]] for y, x0 in offsets])
        outputs = self.model.apply(variables, crops)
        scores = postprocessing.semantic_scores(outputs["class_logits"][-1], outputs["mask_logits"][-1], *window)
        scores = scores.reshape(len(offsets), len(images), *scores.shape[1:])
        total = jnp.zeros((len(images), self.num_classes) + padded, jnp.float32)
        count = jnp.zeros(padded, jnp.float32)
        for (y, x0), window_scores in zip(offsets, scores):
            total = total.at[:, :, y:y + window[0], x0:x0 + window[1]].add(window_scores)
            count = count.at[y:y + window[0], x0:x0 + window[1]].add(1.0)
        return (total / count)[:, :, :height, :width]

    def _predict_fn(self, variables, images, sizes, original_sizes, flips, canvas, instances):
        with jax.default_matmul_precision(self.config.model.precision):  # inference's products too
            return self._predictions(variables, images, sizes, original_sizes, flips, canvas, instances)

    def _predictions(self, variables, images, sizes, original_sizes, flips, canvas, instances):
        """images uint8 [B, H, W, 3] (padded); sizes, original_sizes int [B, 2]; flips bool [B] →
        "semantic" scores [B, K, Ho, Wo] at the original size, plus for panoptic "segment_map"
        [B, Ho, Wo] / "segment_classes" [B, Q], and for the instance task with `instances`
        "instances" (postprocessing.instance_inference)."""
        if self.config.eval.sliding_window:
            scores = self._sliding_window(variables, images, sizes)
            return {"semantic": postprocessing.resize_to_original(scores, sizes, original_sizes, canvas, flips)}
        class_logits, masks = self._forward(variables, images, sizes)
        if self.task == "semantic":  # the reference's order: scores at the padded size, then resized
            scores = postprocessing.semantic_probabilities(class_logits, jax.nn.sigmoid(masks))
            return {"semantic": postprocessing.resize_to_original(scores, sizes, original_sizes, canvas, flips)}
        masks = postprocessing.resize_to_original(masks, sizes, original_sizes, canvas, flips)  # logits first
        valid = postprocessing.canvas_mask(original_sizes, canvas)
        result = {"semantic": postprocessing.semantic_probabilities(class_logits, jax.nn.sigmoid(masks))}
        is_thing = jnp.asarray(self.metadata.is_thing)
        if self.task == "panoptic":
            result["segment_map"], result["segment_classes"] = postprocessing.panoptic_inference(
                class_logits, masks, valid, is_thing, self.config.inference.object_mask_threshold,
                self.config.inference.overlap_threshold)
        elif instances:
            result["instances"] = postprocessing.instance_inference(
                class_logits, masks, valid, self.config.inference.top_k, is_thing if self.metadata.is_thing.any() else None)
        return result

    # ---- on the host ----

    def put(self, array):
        """Shard a batch over this process's devices (replicate one that does not divide)."""
        spec = PartitionSpec("data") if len(array) % self.mesh.size == 0 else PartitionSpec()
        return jax.device_put(array, NamedSharding(self.mesh, spec))

    def predict_views(self, variables, views, original_size, flips, canvas, instances=False):
        """Predictions for a list of images padded into one batch (padded with copies of the first
        to a multiple of the device count); instance results only when `instances` (not scored)."""
        divisor = self.config.dataset.size_divisibility or 1
        pad = tuple(transforms.round_up(max(view.shape[axis] for view in views), divisor) for axis in (0, 1))
        count = transforms.round_up(len(views), self.mesh.size)
        views = list(views) + [views[0]] * (count - len(views))
        images = np.zeros((count, *pad, 3), np.uint8)
        for i, view in enumerate(views):
            images[i, :view.shape[0], :view.shape[1]] = view
        sizes = np.asarray([view.shape[:2] for view in views], np.int32)
        original = np.resize(np.asarray(original_size, np.int32), (count, 2))
        flips = np.resize(np.asarray(flips, bool), count)
        return self._predict(variables, *map(self.put, (images, sizes, original, flips)), canvas=canvas,
                             instances=instances)

    def lower(self, batch_size: int, input_size, canvas, instances: bool = False):
        """The program `predict_views` runs for `batch_size` images padded to `input_size` (H, W) on a
        `canvas`, lowered from shapes alone (nothing runs): `.compile()` it, e.g. for a TPU topology."""
        replicated, split = NamedSharding(self.mesh, PartitionSpec()), NamedSharding(self.mesh, PartitionSpec("data"))
        variables = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
                                 abstract_variables(self.config.model))
        images = jax.ShapeDtypeStruct((batch_size, *input_size, 3), jnp.uint8, sharding=split)
        sizes = jax.ShapeDtypeStruct((batch_size, 2), jnp.int32, sharding=split)
        flips = jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=split)
        with jax.set_mesh(self.mesh):
            return self._predict.lower(variables, images, sizes, sizes, flips, canvas=tuple(canvas), instances=instances)

    def canvas(self, height: int, width: int) -> tuple[int, int]:
        """The canvas that holds an original size: rounded up to eval.canvas_divisibility."""
        multiple = self.config.eval.canvas_divisibility
        return transforms.round_up(height, multiple), transforms.round_up(width, multiple)

    def load(self, checkpoint):
        """{"params", "frozen"} of a checkpoint (training.checkpoint.checkpoint_folder), on this process's devices."""
        variables = abstract_variables(self.config.model)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return load_weights(checkpoint, with_shardings(variables, jax.tree.map(lambda _: replicated, variables)))

    def variables_here(self, variables):
        """The variables replicated on this process's devices (gathered first if sharded over processes)."""
        if not all(leaf.is_fully_addressable for leaf in jax.tree.leaves(variables) if isinstance(leaf, jax.Array)):
            variables = multihost_utils.process_allgather(variables, tiled=True)
        return jax.device_put(variables, NamedSharding(self.mesh, PartitionSpec()))

    def predict(self, variables, image) -> dict:
        """uint8 [H, W, 3] → "semantic_map" int32 [H, W]; for panoptic "segment_map" [H, W] /
        "segment_classes" [Q] (as postprocessing.panoptic_inference); for instance "instances" (top-k)."""
        height, width = image.shape[:2]
        dataset = self.config.dataset
        view = transforms.resize_image(image, *transforms.resized_shape(height, width, dataset.min_size_test,
                                                                        dataset.max_size_test))
        with jax.set_mesh(self.mesh):
            outputs = self.predict_views(variables, [view], [(height, width)], [False], self.canvas(height, width),
                                          instances=True)
            outputs["semantic"] = outputs["semantic"].argmax(1)  # on device: the scores are K full-size maps
            outputs = jax.device_get(outputs)
        result = {"semantic_map": outputs["semantic"][0, :height, :width]}
        if "segment_map" in outputs:
            result.update(segment_map=outputs["segment_map"][0, :height, :width], segment_classes=outputs["segment_classes"][0])
        if "instances" in outputs:
            result["instances"] = {key: value[0] for key, value in outputs["instances"].items()}
            result["instances"]["masks"] = result["instances"]["masks"][:, :height, :width]
        return result

    def augmented_scores(self, variables, example, canvas):
        """Test-time augmentation: the semantic scores [1, K, Ho, Wo] of all of an example's views
        (and, with tta_flip, their mirror images, flipped back) averaged."""
        flips = (False, True) if self.config.eval.tta_flip else (False,)
        original = [(example["height"], example["width"])] * len(flips)
        total = 0.0
        for view in example["views"]:
            views = [view[:, ::-1] if flip else view for flip in flips]
            scores = self.predict_views(variables, views, original, flips, canvas)["semantic"]
            total = total + scores[:len(flips)].sum(0, keepdims=True)
        return total / (len(flips) * len(example["views"]))
