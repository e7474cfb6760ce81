"""Evaluating a model on a split: examples → batches of one size → model → inference → metrics.

As the reference (docs/reference.md §4): each image is resized by the test mapper and padded to a multiple of
`dataset.size_divisibility` above its size (zeros after normalisation), so a batch holds images of
one padded size and each size compiles once; predictions are cropped and resized back to the
original size, on a canvas (original size rounded up to `eval.canvas_divisibility`), and scored
against the original ground truth. Every process evaluates its own share of the split on its own
devices; the metric sums are added over processes at the end. For the instance task each image's
masks are run-length encoded on the host as soon as they are predicted, and process 0 scores all
of them with pycocotools (coco_eval).
"""

import collections
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import grain
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from maskformer_jax import coco_eval, inference, metrics
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.data import transforms
from maskformer_jax.data.pipeline import build_source, eval_pipeline
from maskformer_jax.errors import ConfigError
from maskformer_jax.models.conv import compiler_options
from maskformer_jax.progress import Progress
from maskformer_jax.predictions import PredictionWriter, coco_image_id, merge_panoptic_parts, write_json
from maskformer_jax.resize import clamp_to_extent, downsample_valid, resize_bilinear, valid_extent
from maskformer_jax.training.checkpoint import load_weights, with_shardings
from maskformer_jax.training.state import make_mesh
from maskformer_jax.training.step import normalize

TASKS = ("semantic", "panoptic", "instance")
SUMMARY_KEYS = ("mIoU", "mIoU_gt", "fwIoU", "mACC", "pACC",
                "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", *coco_eval.SUMMARY_KEYS)


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
    through `_predict_views`, one compiled program per (padded size, canvas size).
    """

    def __init__(self, config: ml_collections.ConfigDict, model, metadata):
        validate(config)
        self.config, self.model, self.metadata = config, model, metadata
        self.num_classes = config.model.num_classes
        if len(metadata.class_names) != self.num_classes:
            raise ConfigError(f"the {config.dataset.name!r} data has {len(metadata.class_names)} classes but "
                              f"config.model.num_classes is {self.num_classes}")
        self.task = config.inference.task
        self.padding_absent = transforms.padding_absent(config.dataset)
        self.mesh = make_mesh(jax.local_devices())
        self._predict = jax.jit(self._predict_fn, static_argnames=("canvas", "instances"),
                                compiler_options=compiler_options())

    # ---- on device ----

    def _forward(self, variables, images, sizes):
        """Last-layer class logits [B, Q, K+1] and mask logits upsampled to the padded input [B, Q, H, W].
        Where training padding is absent, so is this padding: the model gets each image's valid mask."""
        height, width = images.shape[1:3]
        inside = inference.canvas_mask(sizes, (height, width))
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
        x = normalize(images, inference.canvas_mask(sizes, (height, width)))
        padded = (max(height, window[0]), max(width, window[1]))
        x = jnp.pad(x, ((0, 0), (0, padded[0] - height), (0, padded[1] - width), (0, 0)))
        offsets = [(y, x0) for y in window_offsets(padded[0], window[0], stride[0])
                   for x0 in window_offsets(padded[1], window[1], stride[1])]
        crops = jnp.concatenate([x[:, y:y + window[0], x0:x0 + window[1]] for y, x0 in offsets])
        outputs = self.model.apply(variables, crops)
        scores = inference.semantic_scores(outputs["class_logits"][-1], outputs["mask_logits"][-1], *window)
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
        "instances" (inference.instance_inference)."""
        if self.config.eval.sliding_window:
            scores = self._sliding_window(variables, images, sizes)
            return {"semantic": inference.resize_to_original(scores, sizes, original_sizes, canvas, flips)}
        class_logits, masks = self._forward(variables, images, sizes)
        if self.task == "semantic":  # the reference's order: scores at the padded size, then resized
            scores = inference.semantic_probabilities(class_logits, jax.nn.sigmoid(masks))
            return {"semantic": inference.resize_to_original(scores, sizes, original_sizes, canvas, flips)}
        masks = inference.resize_to_original(masks, sizes, original_sizes, canvas, flips)  # logits first
        valid = inference.canvas_mask(original_sizes, canvas)
        result = {"semantic": inference.semantic_probabilities(class_logits, jax.nn.sigmoid(masks))}
        is_thing = jnp.asarray(self.metadata.is_thing)
        if self.task == "panoptic":
            result["segment_map"], result["segment_classes"] = inference.panoptic_inference(
                class_logits, masks, valid, is_thing, self.config.inference.object_mask_threshold,
                self.config.inference.overlap_threshold)
        elif instances:
            result["instances"] = inference.instance_inference(
                class_logits, masks, valid, self.config.inference.top_k, is_thing if self.metadata.is_thing.any() else None)
        return result

    # ---- on the host ----

    def _put(self, array):
        """Shard a batch over this process's devices (replicate one that does not divide)."""
        spec = PartitionSpec("data") if len(array) % jax.local_device_count() == 0 else PartitionSpec()
        return jax.device_put(array, NamedSharding(self.mesh, spec))

    def _predict_views(self, variables, views, original_size, flips, canvas, instances=False):
        """Predictions for a list of images padded into one batch (padded with copies of the first
        to a multiple of the device count); instance results only when `instances` (not scored)."""
        divisor = self.config.dataset.size_divisibility or 1
        pad = tuple(transforms.round_up(max(view.shape[axis] for view in views), divisor) for axis in (0, 1))
        count = transforms.round_up(len(views), jax.local_device_count())
        views = list(views) + [views[0]] * (count - len(views))
        images = np.zeros((count, *pad, 3), np.uint8)
        for i, view in enumerate(views):
            images[i, :view.shape[0], :view.shape[1]] = view
        sizes = np.asarray([view.shape[:2] for view in views], np.int32)
        original = np.resize(np.asarray(original_size, np.int32), (count, 2))
        flips = np.resize(np.asarray(flips, bool), count)
        return self._predict(variables, *map(self._put, (images, sizes, original, flips)), canvas=canvas,
                             instances=instances)

    def canvas(self, height: int, width: int) -> tuple[int, int]:
        """The canvas that holds an original size: rounded up to eval.canvas_divisibility."""
        multiple = self.config.eval.canvas_divisibility
        return transforms.round_up(height, multiple), transforms.round_up(width, multiple)

    def load(self, checkpoint):
        """{"params", "frozen"} of a checkpoint (training.checkpoint.checkpoint_folder), on this process's devices."""
        images = jax.ShapeDtypeStruct((1, *self.config.dataset.image_size, 3), jnp.float32)
        variables = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), images)
        variables = {"params": variables["params"], "frozen": variables.get("frozen", {})}
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return load_weights(checkpoint, with_shardings(variables, jax.tree.map(lambda _: replicated, variables)))

    def variables_here(self, variables):
        """The variables replicated on this process's devices (gathered first if sharded over processes)."""
        if not all(leaf.is_fully_addressable for leaf in jax.tree.leaves(variables) if isinstance(leaf, jax.Array)):
            variables = multihost_utils.process_allgather(variables, tiled=True)
        return jax.device_put(variables, NamedSharding(self.mesh, PartitionSpec()))

    def predict(self, variables, image) -> dict:
        """uint8 [H, W, 3] → "semantic_map" int32 [H, W]; for panoptic "segment_map" [H, W] /
        "segment_classes" [Q] (as inference.panoptic_inference); for instance "instances" (top-k)."""
        height, width = image.shape[:2]
        dataset = self.config.dataset
        view = transforms.resize_image(image, *transforms.resized_shape(height, width, dataset.min_size_test,
                                                                        dataset.max_size_test))
        with jax.set_mesh(self.mesh):
            outputs = self._predict_views(variables, [view], [(height, width)], [False], self.canvas(height, width),
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


def gather_to_first(records: list) -> list:
    """Every process's records (JSON-serialisable), concatenated in process order on process 0; other
    processes get []. They travel as UTF-8 JSON bytes padded to the longest share, in one allgather."""
    if jax.process_count() == 1:
        return records
    data = np.frombuffer(json.dumps(records).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([len(data)], np.int64)).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    shares = multihost_utils.process_allgather(padded)  # [processes, longest]
    if jax.process_index() != 0:
        return []
    return [record for share, length in zip(shares, lengths) for record in json.loads(share[:length].tobytes())]


class Evaluator(Predictor):
    """Evaluates on `config.eval.split` (or `source`); create once, call with the variables:
    `evaluator(variables)` → the mIoU family for every task, plus the PQ family for "panoptic" and
    COCO mask AP for "instance"."""

    def __init__(self, config: ml_collections.ConfigDict, model, source=None):
        source = build_source(config.dataset, config.eval.split) if source is None else source
        super().__init__(config, model, dataset_metadata(config.dataset, source))
        self.source = source
        if self.task == "instance":
            name = config.dataset.name
            if not self.metadata.is_thing.any():
                raise ConfigError(f"config.inference.task 'instance' scores thing classes, and the {name!r} data has "
                                  "none; evaluate a panoptic dataset (coco_panoptic, ade20k_panoptic, synthetic)")
            if not config.dataset.instances_json and not getattr(source, "labels_instances", False):
                raise ConfigError(f"the {name!r} data labels classes, not instances, so it has no instance ground "
                                  "truth; set config.dataset.instances_json to a COCO instances JSON or evaluate a "
                                  "panoptic dataset")
        self.batch_size = transforms.round_up(config.eval.batch_size, jax.local_device_count())
        self._score = jax.jit(self._score_fn, static_argnames="keep_maps")

    def _score_fn(self, predictions, segments, classes, original_sizes, example_valid, keep_maps: bool):
        """Metric sums of a batch against ground truth segments int [B, Ho, Wo] (-1 void) with
        classes int [B, S]: "confusion" [K, K], for panoptic "contingency" [B, S + 1, Q + 1]."""
        valid = inference.canvas_mask(original_sizes, segments.shape[1:]) & example_valid[:, None, None]
        gt_classes = jnp.take_along_axis(classes, jnp.maximum(segments, 0).reshape(len(segments), -1), axis=1)
        gt_classes = jnp.where(valid & (segments >= 0), gt_classes.reshape(segments.shape), -1)
        semantic_map = predictions["semantic"].argmax(1).astype(jnp.int32)
        result = {"confusion": metrics.confusion_matrix(semantic_map, gt_classes, self.num_classes)}
        if "segment_map" in predictions:
            result["contingency"] = metrics.panoptic_contingency(
                segments, predictions["segment_map"], valid, classes.shape[1], predictions["segment_classes"].shape[1])
            result["segment_classes"] = predictions["segment_classes"]
        if keep_maps:
            result["semantic_map"] = semantic_map
            if "segment_map" in predictions:
                result["segment_map"] = predictions["segment_map"]
        return result

    def _bucket(self, example):
        """(padded input size, canvas size) of an example; None for the input with test-time augmentation."""
        divisor = self.config.dataset.size_divisibility or 1
        canvas = self.canvas(example["height"], example["width"])
        if self.config.eval.tta:
            return None, canvas
        return tuple(transforms.round_up(size, divisor) for size in example["views"][0].shape[:2]), canvas

    def augmented_scores(self, variables, example, canvas):
        """Test-time augmentation: the semantic scores [1, K, Ho, Wo] of all of an example's views
        (and, with tta_flip, their mirror images, flipped back) averaged."""
        flips = (False, True) if self.config.eval.tta_flip else (False,)
        original = [(example["height"], example["width"])] * len(flips)
        total = 0.0
        for view in example["views"]:
            views = [view[:, ::-1] if flip else view for flip in flips]
            scores = self._predict_views(variables, views, original, flips, canvas)["semantic"]
            total = total + scores[:len(flips)].sum(0, keepdims=True)
        return total / (len(flips) * len(example["views"]))

    def _run(self, variables, examples, canvas, keep_maps):
        """Metric sums (and with `keep_maps` the predicted maps) for examples of one bucket (one example
        with test-time augmentation), with the padded ground-truth "gt_classes" / "gt_crowd" [B, S]."""
        original = [(example["height"], example["width"]) for example in examples]
        if self.config.eval.tta:
            predictions = {"semantic": self.augmented_scores(variables, examples[0], canvas)}
        else:
            predictions = self._predict_views(variables, [example["views"][0] for example in examples], original,
                                              [False] * len(examples), canvas, instances=self.task == "instance")
        instances = predictions.pop("instances", None)  # on device, fetched one image at a time
        count = len(predictions["semantic"])
        segments = np.full((count, *canvas), -1, np.int32)
        classes = np.full((count, self.config.eval.max_segments), -1, np.int32)
        crowd = np.zeros(classes.shape, bool)
        for i, example in enumerate(examples):
            segments[i, :example["height"], :example["width"]] = example["segments"]
            classes[i, :len(example["classes"])] = example["classes"]
            crowd[i, :len(example["iscrowd"])] = example["iscrowd"]
        original = np.resize(np.asarray(original, np.int32), (count, 2))
        example_valid = np.arange(count) < len(examples)
        targets = map(self._put, (segments, classes, original, example_valid))
        result = jax.device_get(self._score(predictions, *targets, keep_maps=keep_maps))
        return dict(result, gt_classes=classes, gt_crowd=crowd, instances=instances)

    def instance_records(self, example, instances, index: int):
        """The COCO records of the `index`-th image of a batch's instance predictions: "images" (its entry),
        "results" and, unless config.dataset.instances_json names the ground truth, "annotations"."""
        one = jax.device_get({key: value[index] for key, value in instances.items()})
        height, width, image_id = example["height"], example["width"], coco_image_id(example["image_id"])
        category_ids = self.metadata.category_ids
        results = coco_eval.prediction_records(image_id, one["scores"], one["classes"], one["masks"][:, :height, :width],
                                               one["kept"], category_ids)
        annotations = [] if self.config.dataset.instances_json else coco_eval.panoptic_ground_truth(
            image_id, example["segments"], example["classes"], example["iscrowd"], self.metadata.is_thing, category_ids)
        return {"images": [{"id": image_id, "height": height, "width": width}], "results": results,
                "annotations": annotations}

    def accumulate(self, variables, output_dir=None, log=print):
        """This process's metric sums: confusion int64 [K, K], panoptic statistics float64 [K, 4]
        (metrics.PQ_FIELDS) and, for the instance task, COCO records {"images", "results",
        "annotations"} (lists; coco_eval). With `output_dir` and config.eval.save_predictions the
        predictions are written there too (PredictionWriter)."""
        variables = self.variables_here(variables)
        save = bool(output_dir) and self.config.eval.save_predictions
        writer = PredictionWriter(output_dir, self.metadata, self.task == "panoptic", jax.process_index()) if save else None
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        statistics = np.zeros((self.num_classes, len(metrics.PQ_FIELDS)))
        records = {"images": [], "results": [], "annotations": []}
        dataset = eval_pipeline(self.config, self.source)
        progress = Progress(len(dataset), log=log)

        programs, reported = set(), [0]  # a line every 10% of the images (every batch on a terminal)

        def run(group, bucket):
            nonlocal confusion, statistics
            canvas, key = bucket[1], (bucket, len(group))
            if not programs:
                size = "augmented views" if bucket[0] is None else f"{bucket[0][0]}x{bucket[0][1]} inputs"
                log(f"eval: compiling for {size} on a {canvas[0]}x{canvas[1]} canvas (one program per "
                    "input and canvas size) ...")
            start = time.time()
            result = self._run(variables, group, canvas, keep_maps=save)
            if not programs:
                log(f"eval: first batch compiled and run in {time.time() - start:.1f} s")
            programs.add(key)
            confusion += result["confusion"]
            for i, example in enumerate(group):
                if "contingency" in result:
                    statistics += metrics.panoptic_statistics(result["contingency"][i], result["gt_classes"][i],
                                                              result["gt_crowd"][i], result["segment_classes"][i],
                                                              self.num_classes)
                if result["instances"] is not None:
                    for key, values in self.instance_records(example, result["instances"], i).items():
                        records[key] += values
                if writer is not None:
                    crop = (slice(0, example["height"]), slice(0, example["width"]))
                    panoptic = (result["segment_map"][i][crop], result["segment_classes"][i]) if "segment_map" in result else ()
                    writer.add(example["image_id"], result["semantic_map"][i][crop], *panoptic)
            progress.advance(len(group))
            if progress.done >= progress.total or progress.done - reported[0] >= max(progress.total // 10, 1) or progress.tty:
                reported[0] = progress.done
                progress.report(f"eval {progress.done}/{progress.total} images ({progress.rate(since_start=True):.1f} img/s, "
                                f"{len(programs)} programs compiled)", keep=progress.done >= progress.total)

        group_size = 1 if self.config.eval.tta else self.batch_size
        pending = collections.defaultdict(list)
        options = grain.ReadOptions(num_threads=self.config.dataset.read_threads, prefetch_buffer_size=16)
        with jax.set_mesh(self.mesh):  # this process's devices, also inside a training run's mesh
            for example in dataset.to_iter_dataset(options):
                bucket = self._bucket(example)
                pending[bucket].append(example)
                if len(pending[bucket]) == group_size:
                    run(pending.pop(bucket), bucket)
            for bucket, group in pending.items():
                run(group, bucket)
        if writer is not None:
            writer.close()
        return confusion, statistics, records

    def __call__(self, variables, output_dir=None, log=print) -> dict:
        """Metrics over the whole split, every process taking part: semantic_metrics, plus
        panoptic_metrics for the panoptic task and instance_metrics for the instance task."""
        confusion, statistics, records = self.accumulate(variables, output_dir, log)
        if jax.process_count() > 1:
            confusion = multihost_utils.process_allgather(confusion).sum(0)
            statistics = multihost_utils.process_allgather(statistics).sum(0)
        save = bool(output_dir) and self.config.eval.save_predictions and jax.process_index() == 0
        if save and self.task == "panoptic":
            merge_panoptic_parts(output_dir, self.metadata)
        result = metrics.semantic_metrics(confusion)
        if self.task == "panoptic":
            result.update(metrics.panoptic_metrics(statistics, self.metadata.is_thing))
        if self.task == "instance":
            result.update(self.instance_metrics(records, output_dir if save else None, log))
        return result

    def instance_metrics(self, records: dict, output_dir=None, log=print) -> dict:
        """COCO mask AP (coco_eval.coco_metrics) of every process's records, computed once on process 0
        and shared with the others; with `output_dir` the results go to instances_results.json there."""
        records = {key: gather_to_first(values) for key, values in records.items()}
        summary = coco_eval.SUMMARY_KEYS
        numbers = np.zeros(len(summary) + self.num_classes)
        if jax.process_index() == 0:
            category_ids = [c if thing else None for c, thing in zip(self.metadata.category_ids, self.metadata.is_thing)]
            image_ids = [image["id"] for image in records["images"]]
            if self.config.dataset.instances_json:
                path = pathlib.Path(self.config.dataset.root) / self.config.dataset.instances_json
                ground_truth = coco_eval.load_ground_truth(path, image_ids, [c for c in category_ids if c is not None])
            else:
                categories = [category for category in self.metadata.categories() if category["isthing"]]
                ground_truth = coco_eval.ground_truth(records["images"], records["annotations"], categories)
            if output_dir:
                pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
                write_json(pathlib.Path(output_dir) / "instances_results.json", records["results"])
            log(f"eval: COCO mask AP of {len(records['results'])} instances in {len(image_ids)} images")
            result = coco_eval.coco_metrics(ground_truth, records["results"], image_ids, category_ids)
            numbers = np.asarray([result[key] for key in summary] + result["AP_per_class"])
        if jax.process_count() > 1:
            numbers = np.asarray(multihost_utils.broadcast_one_to_all(numbers))
        return dict(zip(summary, numbers[:len(summary)].tolist()), AP_per_class=numbers[len(summary):].tolist())
