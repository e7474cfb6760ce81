"""grain input pipelines: training (sharded per process, shuffled, repeated, augmented, batched,
checkpointable) and evaluation (every example exactly once, at its original size).

A training batch, per process: image uint8 [b, H, W, 3], valid bool [b, H, W], segments int32
[b, H, W], labels int32 [b, T] (BATCH_KEYS, for the device) and image_id [b] (stays on the host),
with b = config.batch_size / process count. (H, W) is one of `transforms.training_canvases`: the
crop size for the semantic recipe; for the DETR recipe a landscape or a portrait canvas, the same
for the whole global batch on every process (`AspectGroupedOrder`). Evaluation examples
(EVAL_KEYS) come one at a time: the resized images in `views`, the raw ground truth and the
original height and width; evaluation.py groups them into batches of one size.
"""

import functools
import math
import sys
import threading

import grain
import jax
import ml_collections
import numpy as np

from maskformer_jax.data import sources, synthetic, transforms
from maskformer_jax.data.targets import make_targets
from maskformer_jax.errors import ConfigError, DataError

BATCH_KEYS = ("image", "valid", "segments", "labels")  # the arrays that go to the device
TRAIN_KEYS = BATCH_KEYS + ("image_id",)
EVAL_KEYS = ("views", "segments", "classes", "iscrowd", "image_id", "height", "width")


DATASETS = ("synthetic", "ade20k", "coco_panoptic", "semantic_folder", "tfds", "coco_stuff_10k", "ade20k_full",
            "cityscapes", "mapillary_vistas", "ade20k_panoptic")
# The released benchmarks read from their official layouts: config.dataset.name → sources.<function>(root, split, strict).
BENCHMARK_SOURCES = {"coco_stuff_10k": sources.coco_stuff_10k_source, "ade20k_full": sources.ade20k_full_source,
                     "cityscapes": sources.cityscapes_source, "mapillary_vistas": sources.mapillary_vistas_source}


def build_source(dataset: ml_collections.ConfigDict, split: str, strict: bool = True):
    """The raw-example source that `config.dataset` names, for split "train" or "validation".
    `strict=False`: a folder's images without a label file are listed (`missing_labels`), not an error."""
    name = dataset.name
    if name == "synthetic":
        count = dataset.synthetic_train_examples if split == "train" else dataset.synthetic_eval_examples
        return synthetic.SyntheticSource(count, dataset.synthetic_size, seed=0 if split == "train" else 1)
    if name == "ade20k":
        return sources.ade20k_source(dataset.root, split, strict)
    if name == "coco_panoptic":
        return sources.coco_panoptic_source(dataset.root, "train" if split == "train" else "val")
    if name == "ade20k_panoptic":
        return sources.ade20k_panoptic_source(dataset.root, split)
    if name in BENCHMARK_SOURCES:
        return BENCHMARK_SOURCES[name](dataset.root, split, strict)
    if name == "tfds":
        from maskformer_jax.data.tfds_builders import TfdsSource  # TFDS is imported only when used

        return TfdsSource(dataset.tfds_name, split, dataset.tfds_data_dir or None, dataset.ignore_label)
    if name == "semantic_folder":
        return sources.SemanticFolderSource(
            dataset.root, split, ignore_label=dataset.ignore_label, reduce_zero_label=dataset.reduce_zero_label,
            strict=strict)
    raise ConfigError(f"config.dataset.name must be one of {DATASETS}, got {name!r}")


def _train_example(example, rng, dataset, max_targets):
    example = transforms.TRAIN_TRANSFORMS[dataset.transform](example, rng, dataset)
    example = make_targets(example, dataset.target_mode, max_targets, dataset.drop_smallest_targets)
    return {key: example[key] for key in TRAIN_KEYS}


def image_shapes(source) -> np.ndarray:
    """(height, width) of every example, int [N, 2]: `source.image_shapes()` where the source knows
    them without decoding (COCO's JSON, image headers), else by decoding each example once."""
    if hasattr(source, "image_shapes"):
        return np.asarray(source.image_shapes(), np.int64).reshape(len(source), 2)
    print(f"reading the sizes of {len(source)} training images (the source does not list them) ...", flush=True)
    return np.asarray([source[i]["image"].shape[:2] for i in range(len(source))], np.int64).reshape(-1, 2)


class AspectGroupedOrder:
    """The DETR recipe's global training order: batches of one canvas orientation.

    Element p of the endless stream is (example index, its listed (height, width), its row of
    `transforms.plan_detr`, canvas index):
    every random choice of the mapper is drawn per epoch from (seed, epoch) and known before any
    image is read, so the output size, and with it the orientation, is known from the image sizes
    alone. Each epoch deals its permutation into landscape and portrait batches of `batch_size` (a
    batch completes in permutation order, as detectron2's AspectRatioGroupedDataset fills its two
    buckets) and has a fixed count of batches, ceil(N / batch_size) + 1: an orientation's last
    batch is completed with the first examples of that orientation again, and the extra batch goes
    to the more frequent one. Every example is seen each epoch, a few (< 3 batches) twice. Every
    process computes the same order; `[process_index::process_count]` then takes its share of
    each global batch.
    """

    def __init__(self, shapes, batch_size: int, seed: int, dataset: ml_collections.ConfigDict):
        self.shapes, self.batch_size, self.seed, self.dataset = np.asarray(shapes), batch_size, seed, dataset
        self.batches_per_epoch = math.ceil(len(self.shapes) / batch_size) + 1
        self._lock, self._cache = threading.Lock(), {}

    def __len__(self):
        return sys.maxsize

    def __getstate__(self):  # grain's worker processes get a copy without the lock and the cache
        return {key: value for key, value in self.__dict__.items() if key not in ("_lock", "_cache")}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), _cache={})

    def epoch(self, epoch: int):
        """(example index [M], plan {key: [M, ...]}, orientation [M]), M = batches_per_epoch * batch_size."""
        with self._lock:
            if epoch not in self._cache:
                self._cache = {epoch: self._compute(epoch)}  # one epoch at a time is enough
            return self._cache[epoch]

    def _compute(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.shapes))
        plan = transforms.plan_detr(self.shapes[order, 0], self.shapes[order, 1], rng, self.dataset)
        orientations = transforms.orientation(plan["size"][:, 0], plan["size"][:, 1])
        positions = [np.flatnonzero(orientations == o) for o in (0, 1)]
        counts = [math.ceil(len(p) / self.batch_size) for p in positions]
        counts[int(len(positions[1]) > len(positions[0]))] += self.batches_per_epoch - sum(counts)
        batches = [np.resize(p, (n, self.batch_size)) for p, n in zip(positions, counts) if n]
        batches = np.concatenate(batches)
        batches = batches[np.argsort(batches.max(axis=1), kind="stable")].reshape(-1)  # completion order
        return order[batches], {key: value[batches] for key, value in plan.items()}, orientations[batches]

    def __getitem__(self, position: int):
        epoch, offset = divmod(position, self.batches_per_epoch * self.batch_size)
        indices, plan, orientations = self.epoch(epoch)
        index = int(indices[offset])
        listed_size = tuple(int(v) for v in self.shapes[index])
        return index, listed_size, {key: value[offset] for key, value in plan.items()}, int(orientations[offset])


def _grouped_train_example(element, source, dataset, max_targets):
    """One element of `AspectGroupedOrder` read, transformed as planned, padded to its canvas."""
    index, listed_size, plan, orientation = element
    example = source[index]
    if example["image"].shape[:2] != listed_size:
        height, width = example["image"].shape[:2]
        raise DataError(f"image {example['image_id']} is {height}x{width} but listed as "
                                f"{listed_size[0]}x{listed_size[1]} by its source; fix the annotation file")
    example = transforms.detr_apply(example, plan)
    example = transforms.pad(example, transforms.training_canvases(dataset)[orientation])
    example = make_targets(example, dataset.target_mode, max_targets, dataset.drop_smallest_targets)
    return {key: example[key] for key in TRAIN_KEYS}


def train_pipeline(config: ml_collections.ConfigDict, source=None, process_index=None, process_count=None):
    """An endless, shuffled, augmented, batched grain IterDataset for this process.

    Each epoch is one permutation of the whole source (seeded by config.seed), dealt round-robin to
    the processes, so processes see disjoint examples; the DETR recipe groups it into batches of one
    orientation first (`AspectGroupedOrder`). Images whose pixels are all ignore are trained too
    (detectron2 filters only datasets with instance "annotations"). `iter(...)` gives an iterator whose
    `get_state()` / `set_state()` resume exactly.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.batch_size % process_count:
        raise ConfigError(f"config.batch_size {config.batch_size} is not divisible by {process_count} processes")
    source = build_source(config.dataset, "train") if source is None else source
    if len(source) == 0:
        raise DataError(f"the training split of {config.dataset.name!r} is empty")
    if config.dataset.transform == "detr":
        order = AspectGroupedOrder(image_shapes(source), config.batch_size, config.seed, config.dataset)
        # Global position p → process p % process_count: each global batch's positions are consecutive,
        # so every process's batch k is its share of global batch k, all of one orientation.
        # Batched before the iterator: read threads and worker processes then take whole batches, so
        # worker processes cannot mix elements of two batches (and two canvases) into one.
        dataset = (
            grain.MapDataset.source(order)[process_index::process_count]
            .map(functools.partial(_grouped_train_example, source=source, dataset=config.dataset,
                                   max_targets=config.loss.max_targets))
            .batch(config.batch_size // process_count, drop_remainder=True)
            .to_iter_dataset(grain.ReadOptions(num_threads=config.dataset.read_threads, prefetch_buffer_size=2))
        )
    else:
        dataset = (
            grain.MapDataset.source(source)
            .seed(config.seed)
            .shuffle()
            .repeat(None)
            .random_map(functools.partial(_train_example, dataset=config.dataset, max_targets=config.loss.max_targets))
            # Slice after random_map: grain seeds each example by its index in the dataset being mapped,
            # so augmentations must be drawn on global indices to be independent of the process count.
            # MapDataset is lazy: each process still reads and transforms only its own examples.
            [process_index::process_count]
            .to_iter_dataset(grain.ReadOptions(num_threads=config.dataset.read_threads, prefetch_buffer_size=16))
            .batch(config.batch_size // process_count, drop_remainder=True)
        )
    if config.dataset.num_workers > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.dataset.num_workers))
    return dataset


def _eval_example(example, short_sizes, max_size, max_segments, test_size=None):
    if len(example["classes"]) > max_segments:
        raise DataError(f"image {example['image_id']} has {len(example['classes'])} segments, more than "
                        f"config.eval.max_segments = {max_segments}; raise it")
    example = transforms.evaluation(example, short_sizes, max_size, test_size)
    return {key: example[key] for key in EVAL_KEYS}


def eval_pipeline(config: ml_collections.ConfigDict, source=None, process_index=None, process_count=None):
    """This process's share of the evaluation split (each example exactly once over all processes,
    the first `config.eval.num_examples` if set), one example at a time: EVAL_KEYS, with `views` the
    image resized as the reference's test mapper, once per test-time scale."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    source = build_source(config.dataset, config.eval.split) if source is None else source
    if len(source) == 0:
        raise DataError(f"the {config.eval.split} split of {config.dataset.name!r} is empty")
    dataset, evaluation = config.dataset, config.eval
    test_size = (dataset.min_size_test, dataset.max_size_test)
    if evaluation.tta:  # views resized from the test mapper's output, as detectron2's DatasetMapperTTA
        short_sizes, max_size = evaluation.tta_sizes, evaluation.tta_max_size
    else:
        (short_sizes, max_size), test_size = ((dataset.min_size_test,), dataset.max_size_test), None
    prepare = functools.partial(_eval_example, short_sizes=tuple(short_sizes), max_size=max_size,
                                max_segments=evaluation.max_segments, test_size=test_size)
    examples = grain.MapDataset.source(source)
    if evaluation.num_examples:
        examples = examples[: evaluation.num_examples]
    return examples[process_index::process_count].map(prepare)
