"""Segmentation metrics as detectron2's SemSegEvaluator computes them. SPEC.md §7."""

import jax.numpy as jnp
import numpy as np


def confusion_matrix(predictions, targets, num_classes: int):
    """[K, K] int32 counts (rows: ground truth, columns: prediction) over pixels with a target >= 0.

    predictions, targets: int [...] class maps; target -1 (ignore, padding) is left out.
    """
    valid = targets >= 0
    index = jnp.where(valid, targets * num_classes + predictions, 0)
    counts = jnp.bincount(index.ravel(), weights=valid.ravel().astype(jnp.int32), length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def semantic_metrics(confusion) -> dict:
    """mIoU, fwIoU, mACC, pACC (x100) and per-class IoU from a [K, K] confusion matrix (gt x pred).

    Classes absent from the ground truth are left out of the means (IoU NaN), as detectron2 does.
    """
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    ground_truth, predicted = confusion.sum(1), confusion.sum(0)
    present = ground_truth > 0
    union = ground_truth + predicted - true_positive
    iou = np.full(len(confusion), np.nan)
    iou[present] = true_positive[present] / union[present]
    accuracy = np.full(len(confusion), np.nan)
    accuracy[present] = true_positive[present] / ground_truth[present]
    frequency = ground_truth / max(ground_truth.sum(), 1)
    return {
        "mIoU": 100 * float(np.nanmean(iou)) if present.any() else float("nan"),
        "fwIoU": 100 * float(np.nansum(frequency * iou)),
        "mACC": 100 * float(np.nanmean(accuracy)) if present.any() else float("nan"),
        "pACC": 100 * float(true_positive.sum() / max(ground_truth.sum(), 1)),
        "IoU": (100 * iou).tolist(),
    }
