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

from maskformer_jax.errors import DataError


def make_targets(example, mode: str, max_targets: int, drop_smallest: bool = False):
    """example: segments [H, W] (index into classes/iscrowd, -1 void), classes [S], iscrowd [S], ... →
    the example with `segments` replaced by target slots and `labels [max_targets]` added.

    One count and one lookup pass over the pixels: pixel areas per segment (bincount), the targets
    and their slots from those, then every pixel's slot through a table indexed by segment.
    """
    segments, classes, iscrowd = example["segments"], example["classes"], example["iscrowd"]
    num_segments = len(classes)
    segment_area = np.bincount(segments.ravel() + 1, minlength=num_segments + 1)[1:]  # [S]
    if mode == "semantic":  # a target per class present: the areas of its non-crowd segments add up
        kept = ~iscrowd & (segment_area > 0)
        class_area = np.bincount(classes[kept], weights=segment_area[kept], minlength=1)
        present = np.flatnonzero(class_area)
        areas, id_of_segment, target_classes = class_area[present], np.where(iscrowd, -1, classes), present
    elif mode == "panoptic":
        present = np.flatnonzero(~iscrowd)
        areas, id_of_segment = segment_area[present], np.where(iscrowd, -1, np.arange(num_segments))
        target_classes = classes[present]
    else:
        raise ValueError(f"target mode must be 'semantic' or 'panoptic', got {mode!r}")
    if len(present) > max_targets:
        if not drop_smallest:
            raise DataError(
                f"image {example.get('image_id', '?')} has {len(present)} targets, more than max_targets="
                f"{max_targets}; raise config.loss.max_targets or set config.dataset.drop_smallest_targets"
            )
        order = np.sort(np.argsort(-areas, kind="stable")[:max_targets])
        present, target_classes = present[order], target_classes[order]
    slot_of_id = np.full(max(int(id_of_segment.max(initial=-1)), 0) + 2, -1, np.int32)  # last entry: id -1
    slot_of_id[present] = np.arange(len(present))
    slot_of_segment = np.append(slot_of_id[id_of_segment], np.int32(-1))  # index -1 (void) → -1
    labels = np.full(max_targets, -1, np.int32)
    labels[: len(present)] = target_classes
    out = {key: value for key, value in example.items() if key not in ("classes", "iscrowd")}
    out["segments"] = slot_of_segment[segments]
    out["labels"] = labels
    return out
