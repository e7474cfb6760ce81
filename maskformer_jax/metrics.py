"""Segmentation metrics as the reference computes them (docs/reference.md §7), as sums that stream over batches
and add up across processes: a confusion matrix for the mIoU family (detectron2's SemSegEvaluator)
and per-class (TP, FP, FN, ΣIoU) for the PQ family (COCO panopticapi's pq_compute).

The pixel counting runs on device; what needs rules (matching segments) runs on the host on
per-image contingency tables of a few hundred entries.
"""

import jax.numpy as jnp
import numpy as np

PQ_FIELDS = ("tp", "fp", "fn", "iou")  # columns of the per-class panoptic statistics


def confusion_matrix(predictions, targets, num_classes: int):
    """[K, K] int32 counts (rows: ground truth, columns: prediction) over pixels with a target >= 0.

    predictions, targets: int [...] class maps; target -1 (ignore, padding) is left out.
    """
    valid = targets >= 0
    index = jnp.where(valid, targets * num_classes + predictions, 0)
    counts = jnp.bincount(index.ravel(), weights=valid.ravel().astype(jnp.int32), length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def semantic_metrics(confusion) -> dict:
    """mIoU, mIoU_gt, fwIoU, mACC, pACC (x100) and per-class IoU and accuracy from a [K, K] confusion
    matrix (gt x pred).

    "mIoU" is the paper's: detectron2's SemSegEvaluator before July 2022 (commit f3c1bc19) summed
    the IoU of the classes present in the ground truth and divided by the number of classes present
    in the ground truth *or* the prediction, so a predicted class absent from the ground truth
    counts as IoU 0. "mIoU_gt" is detectron2's rule since: the mean over ground-truth classes only.
    Per-class IoU and accuracy are NaN for classes absent from the ground truth.
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
    in_either = (ground_truth + predicted) > 0
    return {
        "mIoU": 100 * float(np.nansum(iou) / in_either.sum()) if present.any() else float("nan"),
        "mIoU_gt": 100 * float(np.nanmean(iou)) if present.any() else float("nan"),
        "fwIoU": 100 * float(np.nansum(frequency * iou)),
        "mACC": 100 * float(np.nanmean(accuracy)) if present.any() else float("nan"),
        "pACC": 100 * float(true_positive.sum() / max(ground_truth.sum(), 1)),
        "IoU": (100 * iou).tolist(),
        "ACC": (100 * accuracy).tolist(),
    }


def panoptic_contingency(gt_segments, pred_segments, valid, num_gt: int, num_pred: int):
    """Pixel counts of every (ground-truth segment, predicted segment) pair, per image.

    gt_segments int [B, H, W] in [-1, num_gt) (-1 void); pred_segments int [B, H, W] in [-1, num_pred)
    (-1 void); valid bool [B, H, W] (pixels that count) → int32 [B, num_gt + 1, num_pred + 1] where
    the last row is ground-truth void and the last column predicted void.
    """
    gt = jnp.where(gt_segments < 0, num_gt, gt_segments)
    pred = jnp.where(pred_segments < 0, num_pred, pred_segments)
    index = (gt * (num_pred + 1) + pred).reshape(len(gt), -1)
    size = (num_gt + 1) * (num_pred + 1)
    counts = jnp.zeros((len(gt), size), jnp.int32)
    counts = counts.at[jnp.arange(len(gt))[:, None], index].add(valid.reshape(len(gt), -1).astype(jnp.int32))
    return counts.reshape(len(gt), num_gt + 1, num_pred + 1)


def panoptic_statistics(contingency, gt_classes, gt_crowd, pred_classes, num_classes: int) -> np.ndarray:
    """panopticapi's per-image counting on a contingency table: float64 [K, 4] of (TP, FP, FN, ΣIoU).

    contingency [S + 1, P + 1] (last row / column void, from `panoptic_contingency`); gt_classes
    int [S] (-1 for unused slots), gt_crowd bool [S]; pred_classes int [P] (-1: no segment).
    - A ground-truth and a predicted segment of one class match when IoU > 0.5, with the
      prediction's pixels on void left out of the union. Crowd segments never match.
    - Unmatched non-crowd ground truth is a false negative.
    - An unmatched prediction is a false positive unless more than half of it lies on void or on
      the crowd region of its class (the last crowd segment of that class, as panopticapi keeps).
    Areas are pixel counts (panopticapi reads ground-truth areas from the JSON, equal for valid data).
    """
    contingency = np.asarray(contingency, np.int64)
    gt_classes, gt_crowd, pred_classes = map(np.asarray, (gt_classes, gt_crowd, pred_classes))
    gt_area, pred_area = contingency.sum(1)[:-1], contingency.sum(0)[:-1]
    gt_exists, pred_exists = (gt_classes >= 0) & (gt_area > 0), (pred_classes >= 0) & (pred_area > 0)
    intersection = contingency[:-1, :-1]
    on_void = contingency[-1, :-1]
    union = pred_area[None, :] + gt_area[:, None] - intersection - on_void[None, :]
    iou = intersection / np.maximum(union, 1)
    matched = ((iou > 0.5) & (gt_classes[:, None] == pred_classes[None, :]) & gt_exists[:, None]
               & ~gt_crowd[:, None] & pred_exists[None, :])
    stats = np.zeros((num_classes, 4))
    gt_index, pred_index = np.nonzero(matched)  # IoU > 0.5 makes matches unique
    np.add.at(stats[:, 0], gt_classes[gt_index], 1)
    np.add.at(stats[:, 3], gt_classes[gt_index], iou[gt_index, pred_index])
    missed = gt_exists & ~gt_crowd & ~matched.any(1)
    np.add.at(stats[:, 2], gt_classes[missed], 1)
    crowd_of_class = {int(c): s for s, c in enumerate(gt_classes) if gt_crowd[s] and gt_exists[s]}
    for p in np.nonzero(pred_exists & ~matched.any(0))[0]:
        ignored = on_void[p]
        if int(pred_classes[p]) in crowd_of_class:
            ignored += intersection[crowd_of_class[int(pred_classes[p])], p]
        if ignored / pred_area[p] <= 0.5:
            stats[pred_classes[p], 1] += 1
    return stats


def panoptic_metrics(statistics, is_thing) -> dict:
    """PQ, SQ, RQ (x100) for All / Things / Stuff and per class from [K, 4] (TP, FP, FN, ΣIoU) sums.

    Means are over the classes with TP + FP + FN > 0, as panopticapi's pq_average; is_thing bool [K].
    """
    tp, fp, fn, iou = np.asarray(statistics, np.float64).T
    is_thing = np.asarray(is_thing, bool)
    present = tp + fp + fn > 0
    denominator = np.maximum(tp + 0.5 * fp + 0.5 * fn, 1e-12)
    pq, rq = np.where(present, iou / denominator, 0.0), np.where(present, tp / denominator, 0.0)
    sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
    metrics = {}
    for name, group in (("", np.ones_like(is_thing)), ("_th", is_thing), ("_st", ~is_thing)):
        selected = present & group
        count = int(selected.sum())
        for key, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            metrics[key + name] = 100 * float(values[selected].mean()) if count else float("nan")
        metrics["n" + name] = count
    metrics.update(PQ_per_class=(100 * pq).tolist(), SQ_per_class=(100 * sq).tolist(), RQ_per_class=(100 * rq).tolist())
    return metrics
