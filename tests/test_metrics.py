"""Metrics on hand-made cases, with the expected values worked out from the rules in the comments."""

import jax.numpy as jnp
import numpy as np
import pytest

from maskformer_jax import metrics


def test_confusion_matrix_skips_ignored_pixels():
    predictions = jnp.asarray([[0, 1, 1], [2, 2, 0]])
    targets = jnp.asarray([[0, 1, 2], [2, -1, -1]])
    np.testing.assert_array_equal(metrics.confusion_matrix(predictions, targets, 3),
                                  [[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_semantic_metrics_by_hand():
    # rows ground truth, columns prediction; class 2 never in the ground truth (predicted 5 times).
    confusion = np.array([[8, 2, 0], [1, 4, 5], [0, 0, 0]])
    result = metrics.semantic_metrics(confusion)
    iou = [8 / (10 + 9 - 8), 4 / (10 + 6 - 4)]  # TP / (GT + predicted - TP)
    assert result["IoU"][:2] == pytest.approx([100 * v for v in iou]) and np.isnan(result["IoU"][2])
    assert result["mIoU_gt"] == pytest.approx(100 * np.mean(iou))  # class 2 (no ground truth) left out
    assert result["mIoU"] == pytest.approx(100 * np.sum(iou) / 3)  # class 2 (predicted) counts as IoU 0
    assert result["fwIoU"] == pytest.approx(100 * (0.5 * iou[0] + 0.5 * iou[1]))
    assert result["mACC"] == pytest.approx(100 * (8 / 10 + 4 / 10) / 2)
    assert result["pACC"] == pytest.approx(100 * 12 / 20)


def detectron2_2021_semantic_metrics(conf_matrix):
    """detectron2's SemSegEvaluator.evaluate before commit f3c1bc19 (July 2022), restated: its
    (K + 1) x (K + 1) matrix has predictions as rows, ground truth as columns, ignore last."""
    num_classes = conf_matrix.shape[0] - 1
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    tp = conf_matrix.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf_matrix[:-1, :-1], axis=0).astype(float)
    class_weights = pos_gt / np.sum(pos_gt)
    pos_pred = np.sum(conf_matrix[:-1, :-1], axis=1).astype(float)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou_valid = (pos_gt + pos_pred) > 0
    union = pos_gt + pos_pred - tp
    iou[acc_valid] = tp[acc_valid] / union[acc_valid]
    macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
    miou = np.sum(iou[acc_valid]) / np.sum(iou_valid)
    fiou = np.sum(iou[acc_valid] * class_weights[acc_valid])
    pacc = np.sum(tp) / np.sum(pos_gt)
    return {"mIoU": 100 * miou, "fwIoU": 100 * fiou, "mACC": 100 * macc, "pACC": 100 * pacc}


def test_semantic_metrics_equal_detectron2_2021_on_random_maps():
    rng = np.random.default_rng(0)
    for trial in range(20):
        num_classes = 6
        gt = rng.integers(-1, num_classes - 2, 500)  # classes 4 and 5 never in the ground truth
        pred = np.where(rng.random(500) < 0.6, np.maximum(gt, 0), rng.integers(0, num_classes - trial % 2, 500))
        ours = metrics.semantic_metrics(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(gt), num_classes))
        gt_d2 = np.where(gt < 0, num_classes, gt)
        conf = np.bincount((num_classes + 1) * pred + gt_d2, minlength=(num_classes + 1) ** 2)
        reference = detectron2_2021_semantic_metrics(conf.reshape(num_classes + 1, num_classes + 1))
        for key, value in reference.items():
            assert ours[key] == pytest.approx(value), key


def contingency_of(gt, pred, num_gt, num_pred, valid=None):
    gt, pred = np.asarray(gt)[None], np.asarray(pred)[None]
    valid = np.ones_like(gt, bool) if valid is None else np.asarray(valid)[None]
    return np.asarray(metrics.panoptic_contingency(jnp.asarray(gt), jnp.asarray(pred), jnp.asarray(valid), num_gt, num_pred))[0]


def test_contingency_counts_pairs_and_void():
    gt = [[0, 0, -1], [1, 1, 1]]
    pred = [[2, -1, 2], [2, 0, 0]]
    table = contingency_of(gt, pred, 2, 3, valid=[[True, True, True], [True, True, False]])
    expected = np.zeros((3, 4), int)
    expected[0, 2] = 1; expected[0, 3] = 1  # gt 0: one pixel predicted 2, one predicted void
    expected[2, 2] = 1  # gt void, predicted 2
    expected[1, 2] = 1; expected[1, 0] = 1  # gt 1: (1, 2) is not valid
    np.testing.assert_array_equal(table, expected)


def coco_case():
    """A 10 x 10 image. Ground truth (classes: 0 person (thing), 1 sky (stuff)):
      g0 person, rows 0-3, cols 0-4 (20 px)        g1 person, crowd, rows 0-3, cols 5-9 (20 px)
      g2 sky, rows 4-7, all cols (40 px)           rows 8-9: void (20 px)
    Predictions:
      p0 person, rows 0-3, cols 0-3 (16 px)        → IoU with g0 = 16 / 20 = 0.8: TP
      p1 person, rows 0-3, cols 6-9 (16 px)        → on the crowd region of its class: ignored
      p2 sky, rows 4-9, cols 0-4 (30 px: 20 on g2, 10 on void)
         IoU with g2 = 20 / (30 + 40 - 20 - 10) = 0.5, not > 0.5: no match → g2 is a FN;
         p2 unmatched: void share 10/30 <= 0.5 → FP
      p3 sky, rows 8-9, cols 5-9 (10 px, all void) → ignored (void share 1 > 0.5)
      p4 person, rows 4-7, cols 5-9 (20 px on g2)  → FP (no person there)
    Pixels in row 0-3 col 4 and row 4-7 col 5-9 ... are covered as listed; the rest predicted void.
    Per class: person TP 1 (IoU 0.8), FP 1 (p4), FN 0; sky TP 0, FP 1 (p2), FN 1 (g2).
    PQ person = 0.8 / (1 + 0.5) = 0.5333, SQ 0.8, RQ 0.6667; PQ sky = 0 / (0 + 0.5 + 0.5) = 0, SQ 0,
    RQ 0; PQ = 0.2667, PQ_th = 0.5333, PQ_st = 0.
    """
    gt = np.full((10, 10), -1)
    gt[0:4, 0:5], gt[0:4, 5:10], gt[4:8, :] = 0, 1, 2
    pred = np.full((10, 10), -1)
    pred[0:4, 0:4], pred[0:4, 6:10], pred[4:10, 0:5], pred[8:10, 5:10], pred[4:8, 5:10] = 0, 1, 2, 3, 4
    gt_classes, gt_crowd = np.array([0, 0, 1]), np.array([False, True, False])
    pred_classes = np.array([0, 0, 1, 1, 0])
    return gt, pred, gt_classes, gt_crowd, pred_classes


def test_panoptic_quality_follows_panopticapi_rules():
    gt, pred, gt_classes, gt_crowd, pred_classes = coco_case()
    table = contingency_of(gt, pred, 3, 5)
    stats = metrics.panoptic_statistics(table, gt_classes, gt_crowd, pred_classes, num_classes=2)
    np.testing.assert_allclose(stats, [[1, 1, 0, 0.8], [0, 1, 1, 0]])  # (TP, FP, FN, ΣIoU)
    result = metrics.panoptic_metrics(stats, is_thing=[True, False])
    assert result["PQ"] == pytest.approx(100 * (0.8 / 1.5 + 0) / 2)
    assert result["PQ_th"] == pytest.approx(100 * 0.8 / 1.5) and result["SQ_th"] == pytest.approx(80)
    assert result["RQ_th"] == pytest.approx(100 / 1.5)
    assert result["PQ_st"] == 0 and result["SQ_st"] == 0 and result["RQ_st"] == 0
    assert result["n"] == 2 and result["n_th"] == 1 and result["n_st"] == 1


def test_iou_above_half_matches_and_unused_slots_are_ignored():
    # g0 sky 40 px; p0 sky covers 21 of them and nothing else: IoU 21/40 > 0.5 → TP.
    gt = np.full((5, 10), -1)
    gt[0:4] = 0
    pred = np.full((5, 10), -1)
    pred.reshape(-1)[:21] = 0
    table = contingency_of(gt, pred, 4, 3)  # slots 1..3 unused on both sides
    stats = metrics.panoptic_statistics(table, np.array([1, -1, -1, -1]), np.zeros(4, bool),
                                        np.array([1, -1, -1]), num_classes=2)
    np.testing.assert_allclose(stats, [[0, 0, 0, 0], [1, 0, 0, 21 / 40]])
    result = metrics.panoptic_metrics(stats, is_thing=[True, False])
    assert result["n"] == 1 and np.isnan(result["PQ_th"])  # classes without TP, FP or FN are left out
    assert result["PQ"] == pytest.approx(100 * 21 / 40)
