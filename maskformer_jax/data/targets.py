"""Targets in the batch contract: segments [H, W] int32 (target slot per pixel, -1 for none) and
labels [T] int32 (class per slot, -1 for padding), T = max_targets.

- "semantic": one target per class present after augmentation (segments of one class merge), as
  the semantic mapper's np.unique of the label.
- "panoptic": one target per non-crowd segment of the annotation, also one the crop or resize left
  with no pixel (the DETR panoptic mapper appends `pan_seg == id` with no area test; such an
  all-zero mask is matched and trained as one).
Crowd segments and void pixels belong to no target. More targets than slots is an error naming the
image, unless `drop_smallest` is set (the smallest, empty ones first, are then left out).
"""

import numpy as np

from maskformer_jax.data.sources import DataError


def make_targets(example, mode: str, max_targets: int, drop_smallest: bool = False):
    """example: segments [H, W] (index into classes/iscrowd, -1 void), classes [S], iscrowd [S], ... →
    the example with `segments` replaced by target slots and `labels [max_targets]` added."""
    segments, classes, iscrowd = example["segments"], example["classes"], example["iscrowd"]
    keep = (segments >= 0) & ~iscrowd[np.maximum(segments, 0)]
    if mode == "semantic":
        ids = np.where(keep, classes[np.maximum(segments, 0)], -1)  # merge segments by class
        id_to_class = np.arange(max(int(classes.max(initial=-1)) + 1, 1))
        present, areas = np.unique(ids[ids >= 0], return_counts=True)
    elif mode == "panoptic":
        ids = np.where(keep, segments, -1)
        id_to_class = classes
        present = np.flatnonzero(~iscrowd)
        areas = np.bincount(ids[ids >= 0], minlength=len(classes))[present]
    else:
        raise ValueError(f"target mode must be 'semantic' or 'panoptic', got {mode!r}")
    if len(present) > max_targets:
        if not drop_smallest:
            raise DataError(
                f"image {example.get('image_id', '?')} has {len(present)} targets, more than max_targets="
                f"{max_targets}; raise config.loss.max_targets or set config.dataset.drop_smallest_targets"
            )
        present = np.sort(present[np.argsort(-areas, kind="stable")[:max_targets]])
    slot = np.full(max(int(ids.max(initial=-1)), len(id_to_class) - 1, 0) + 2, -1, np.int32)  # last: id -1
    slot[present] = np.arange(len(present))
    labels = np.full(max_targets, -1, np.int32)
    labels[: len(present)] = id_to_class[present]
    out = {key: value for key, value in example.items() if key not in ("classes", "iscrowd")}
    out["segments"] = slot[ids]
    out["labels"] = labels
    return out
