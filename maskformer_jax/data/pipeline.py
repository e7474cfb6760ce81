"""grain input pipelines: training (sharded per process, shuffled, repeated, augmented, batched,
checkpointable) and evaluation (every example exactly once, last batch padded and flagged).

A training batch, per process: image uint8 [b, H, W, 3], valid bool [b, H, W], segments int32
[b, H, W], labels int32 [b, T] (BATCH_KEYS, for the device) and image_id [b] (stays on the host),
with b = config.batch_size / process count. Evaluation batches add height and width (the original
size) and example_valid (False on the padding examples).
"""

import functools

import grain
import jax
import ml_collections
import numpy as np

from maskformer_jax.data import sources, synthetic, transforms
from maskformer_jax.data.targets import make_targets

BATCH_KEYS = ("image", "valid", "segments", "labels")  # the arrays that go to the device
TRAIN_KEYS = BATCH_KEYS + ("image_id",)
EVAL_KEYS = TRAIN_KEYS + ("height", "width")


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


def _eval_example(example, dataset, max_targets, pad_size):
    example = transforms.evaluation(example, dataset.min_size_test, dataset.max_size_test, pad_size)
    example = make_targets(example, dataset.target_mode, max_targets, drop_smallest=True)
    return {key: example[key] for key in EVAL_KEYS}


def _pad_batch(examples, batch_size):
    """Stack examples and pad to batch_size with copies of the first, flagged example_valid False."""
    count = len(examples)
    examples = list(examples) + [examples[0]] * (batch_size - count)
    batch = {key: np.stack([example[key] for example in examples]) for key in EVAL_KEYS}
    batch["example_valid"] = np.arange(batch_size) < count
    return batch


def eval_pipeline(config: ml_collections.ConfigDict, pad_size, batch_size: int, source=None,
                  process_index=None, process_count=None):
    """Every example of the evaluation split exactly once (this process's share), resized as the
    reference's test mapper and padded to `pad_size` (H, W); the last batch is padded to `batch_size`
    with examples flagged `example_valid = False`."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    source = build_source(config.dataset, "validation") if source is None else source
    if len(source) == 0:
        raise ValueError(f"the validation split of {config.dataset.name!r} is empty")
    prepare = functools.partial(
        _eval_example, dataset=config.dataset, max_targets=config.loss.max_targets, pad_size=tuple(pad_size)
    )
    return (
        grain.MapDataset.source(source)[process_index::process_count]
        .map(prepare)
        .batch(batch_size, batch_fn=functools.partial(_pad_batch, batch_size=batch_size))
    )
