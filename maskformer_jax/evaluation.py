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
import pathlib
import time

import jax
import jax.numpy as jnp
import grain
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from maskformer_jax import coco_eval, metrics, postprocessing
from maskformer_jax.data import transforms
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.data.pipeline import build_source, eval_pipeline
from maskformer_jax.errors import ConfigError
from maskformer_jax.files import write_json
from maskformer_jax.prediction_files import PredictionWriter, coco_image_id, merge_panoptic_parts
from maskformer_jax.predictor import Predictor
from maskformer_jax.progress import Progress

SUMMARY_KEYS = ("mIoU", "mIoU_gt", "fwIoU", "mACC", "pACC",
                "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", *coco_eval.SUMMARY_KEYS)


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


class Evaluator:
    """Evaluates on `config.eval.split` (or `source`); create once, call with the variables:
    `evaluator(variables)` → the mIoU family for every task, plus the PQ family for "panoptic" and
    COCO mask AP for "instance". Its `predictor` runs the model (and `load`s checkpoints)."""

    def __init__(self, config: ml_collections.ConfigDict, model, source=None):
        source = build_source(config.dataset, config.eval.split) if source is None else source
        self.predictor = Predictor(config, model, dataset_metadata(config.dataset, source))
        self.config, self.metadata, self.source = config, self.predictor.metadata, source
        self.task, self.num_classes = config.inference.task, config.model.num_classes
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
        valid = postprocessing.canvas_mask(original_sizes, segments.shape[1:]) & example_valid[:, None, None]
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
        canvas = self.predictor.canvas(example["height"], example["width"])
        if self.config.eval.tta:
            return None, canvas
        return tuple(transforms.round_up(size, divisor) for size in example["views"][0].shape[:2]), canvas

    def _run(self, variables, examples, canvas, keep_maps):
        """Metric sums (and with `keep_maps` the predicted maps) for examples of one bucket (one example
        with test-time augmentation), with the padded ground-truth "gt_classes" / "gt_crowd" [B, S]."""
        original = [(example["height"], example["width"]) for example in examples]
        if self.config.eval.tta:
            predictions = {"semantic": self.predictor.augmented_scores(variables, examples[0], canvas)}
        else:
            predictions = self.predictor.predict_views(variables, [example["views"][0] for example in examples], original,
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
        targets = map(self.predictor.put, (segments, classes, original, example_valid))
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

    def _groups(self, dataset):
        """(bucket, examples): the examples of `dataset` in groups of one bucket, eval.batch_size each (one
        with test-time augmentation) as they fill, then each bucket's remainder."""
        group_size = 1 if self.config.eval.tta else self.batch_size
        pending = collections.defaultdict(list)
        options = grain.ReadOptions(num_threads=self.config.dataset.read_threads, prefetch_buffer_size=16)
        for example in dataset.to_iter_dataset(options):
            bucket = self._bucket(example)
            pending[bucket].append(example)
            if len(pending[bucket]) == group_size:
                yield bucket, pending.pop(bucket)
        yield from pending.items()

    def accumulate(self, variables, output_dir=None, log=print):
        """This process's metric sums: confusion int64 [K, K], panoptic statistics float64 [K, 4]
        (metrics.PQ_FIELDS) and, for the instance task, COCO records {"images", "results",
        "annotations"} (lists; coco_eval). With `output_dir` and config.eval.save_predictions the
        predictions are written there too (PredictionWriter)."""
        variables = self.predictor.variables_here(variables)
        save = bool(output_dir) and self.config.eval.save_predictions
        writer = PredictionWriter(output_dir, self.metadata, self.task == "panoptic", jax.process_index()) if save else None
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        statistics = np.zeros((self.num_classes, len(metrics.PQ_FIELDS)))
        records = {"images": [], "results": [], "annotations": []}
        dataset = eval_pipeline(self.config, self.source)
        progress = Progress(len(dataset), log=log)

        programs, reported = set(), 0  # a progress line every 10% of the images (every batch on a terminal)
        with jax.set_mesh(self.predictor.mesh):  # this process's devices, also inside a training run's mesh
            for bucket, group in self._groups(dataset):
                canvas = bucket[1]
                if not programs:
                    size = "augmented views" if bucket[0] is None else f"{bucket[0][0]}x{bucket[0][1]} inputs"
                    log(f"eval: compiling for {size} on a {canvas[0]}x{canvas[1]} canvas (one program per "
                        "input and canvas size) ...")
                start = time.time()
                result = self._run(variables, group, canvas, keep_maps=save)
                if not programs:
                    log(f"eval: first batch compiled and run in {time.time() - start:.1f} s")
                programs.add((bucket, len(group)))
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
                finished = progress.done >= progress.total
                if finished or progress.tty or progress.done - reported >= max(progress.total // 10, 1):
                    reported = progress.done
                    progress.report(f"eval {progress.done}/{progress.total} images ({progress.rate(since_start=True):.1f} "
                                    f"img/s, {len(programs)} programs compiled)", keep=finished)
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
