"""grain input pipelines: training (sharded per process, shuffled, repeated, augmented, batched,
checkpointable) and evaluation (every example exactly once, at its original size).

A training batch, per process: image uint8 [b, H, W, 3], valid bool [b, H, W], segments int32
[b, H, W], labels int32 [b, T] (BATCH_KEYS, for the device) and image_id [b] (stays on the host),
with b = config.batch_size / process count. Evaluation examples (EVAL_KEYS) come one at a time: the
resized images in `views`, the raw ground truth and the original height and width; evaluation.py
groups them into batches of one size.
"""

import functools

import grain
import jax
import ml_collections

from maskformer_jax.data import sources, synthetic, transforms
from maskformer_jax.data.targets import make_targets

BATCH_KEYS = ("image", "valid", "segments", "labels")  # the arrays that go to the device
TRAIN_KEYS = BATCH_KEYS + ("image_id",)
EVAL_KEYS = ("views", "segments", "classes", "iscrowd", "image_id", "height", "width")


def build_source(dataset: ml_collections.ConfigDict, split: str):
    """The raw-example source that `config.dataset` names, for split "train" or "validation"."""
    name = dataset.name
    if name == "synthetic":
        count = dataset.synthetic_train_examples if split == "train" else dataset.synthetic_eval_examples
        return synthetic.SyntheticSource(count, dataset.synthetic_size, seed=0 if split == "train" else 1)
    if name == "ade20k":
        return sources.ade20k_source(dataset.root, split)
    if name == "coco_panoptic":
        return sources.coco_panoptic_source(dataset.root, "train" if split == "train" else "val")
    if name == "tfds":
        from maskformer_jax.data.tfds_builders import TfdsSource  # TFDS is imported only when used

        return TfdsSource(dataset.tfds_name, split, dataset.tfds_data_dir or None, dataset.ignore_label)
    if name == "semantic_folder":
        return sources.SemanticFolderSource(
            dataset.root, split, ignore_label=dataset.ignore_label, reduce_zero_label=dataset.reduce_zero_label
        )
    raise ValueError(f"unknown config.dataset.name {name!r}")


def _train_example(example, rng, dataset, max_targets):
    example = transforms.TRAIN_TRANSFORMS[dataset.transform](example, rng, dataset)
    example = make_targets(example, dataset.target_mode, max_targets, dataset.drop_smallest_targets)
    return {key: example[key] for key in TRAIN_KEYS}


def _has_labels(example):
    """The reference filters images whose pixels are all ignore from training."""
    return bool((example["segments"] >= 0).any())


def train_pipeline(config: ml_collections.ConfigDict, source=None, process_index=None, process_count=None):
    """An endless, shuffled, augmented, batched grain IterDataset for this process.

    Each epoch is one permutation of the whole source (seeded by config.seed), dealt round-robin to
    the processes, so processes see disjoint examples. `iter(...)` gives an iterator whose
    `get_state()` / `set_state()` resume exactly.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.batch_size % process_count:
        raise ValueError(f"config.batch_size {config.batch_size} is not divisible by {process_count} processes")
    source = build_source(config.dataset, "train") if source is None else source
    if len(source) == 0:
        raise ValueError(f"the training split of {config.dataset.name!r} is empty")
    dataset = (
        grain.MapDataset.source(source)
        .seed(config.seed)
        .shuffle()
        .repeat(None)
        .filter(_has_labels)
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


def _eval_example(example, short_sizes, max_size, max_segments):
    if len(example["classes"]) > max_segments:
        raise ValueError(f"image {example['image_id']} has {len(example['classes'])} segments, more than "
                         f"config.eval.max_segments = {max_segments}")
    example = transforms.evaluation(example, short_sizes, max_size)
    return {key: example[key] for key in EVAL_KEYS}


def eval_pipeline(config: ml_collections.ConfigDict, source=None, process_index=None, process_count=None):
    """This process's share of the evaluation split (each example exactly once over all processes,
    the first `config.eval.num_examples` if set), one example at a time: EVAL_KEYS, with `views` the
    image resized as the reference's test mapper, once per test-time scale."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    source = build_source(config.dataset, config.eval.split) if source is None else source
    if len(source) == 0:
        raise ValueError(f"the {config.eval.split} split of {config.dataset.name!r} is empty")
    dataset, evaluation = config.dataset, config.eval
    if evaluation.tta:
        short_sizes, max_size = evaluation.tta_sizes, evaluation.tta_max_size
    else:
        short_sizes, max_size = (dataset.min_size_test,), dataset.max_size_test
    prepare = functools.partial(_eval_example, short_sizes=tuple(short_sizes), max_size=max_size,
                                max_segments=evaluation.max_segments)
    examples = grain.MapDataset.source(source)
    if evaluation.num_examples:
        examples = examples[: evaluation.num_examples]
    return examples[process_index::process_count].map(prepare)
