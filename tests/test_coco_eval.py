"""COCO mask AP: our records and scoring against pycocotools' COCOeval run directly on the same JSON
files, the ground truth derived from panoptic annotations, and the instance task through eval.py."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskformer_jax import coco_eval

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def box_mask(height, width, top, left, bottom, right):
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def hand_made_split():
    """Three images with cats and dogs (one crowd), and predictions that hit, miss and duplicate them."""
    rng = np.random.default_rng(0)
    images, annotations, predictions = [], [], []
    for image_id in (11, 12, 13):
        height, width = 60 + image_id, 80
        images.append({"id": image_id, "height": height, "width": width})
        for n in range(3):
            top, left = rng.integers(0, 20), rng.integers(0, 30)
            size = (35, 45) if n == 0 else rng.integers(4, 20, 2)  # one medium instance (over 32² pixels) an image
            mask = box_mask(height, width, top, left, top + size[0], left + size[1])
            category = CATEGORIES[n % 2]["id"]
            rle = coco_eval.encode(mask[None])[0]
            annotations.append({"image_id": image_id, "category_id": category, "segmentation": rle,
                                "area": float(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(),
                                "iscrowd": int(n == 2 and image_id == 12)})
            for shift in (0, 2, 6):  # good, worse and poor copies of each instance
                predictions.append((image_id, np.roll(mask, shift, axis=1), category, rng.uniform(0.1, 1.0)))
        predictions.append((image_id, box_mask(height, width, 0, 0, 5, 5), 3, 0.95))  # a confident false positive
    return images, annotations, predictions


def results_of(predictions, category_ids=(3, None, 7)):
    """Our records, one image at a time, as the evaluator writes them (class 1 is a stuff class)."""
    to_class = {3: 0, 7: 2}
    results = []
    for image_id in sorted({p[0] for p in predictions}):
        mine = [p for p in predictions if p[0] == image_id]
        results += coco_eval.prediction_records(
            image_id, np.asarray([p[3] for p in mine]), np.asarray([to_class[p[2]] for p in mine]),
            np.stack([p[1] for p in mine]), np.ones(len(mine), bool), category_ids)
    return results


def cocoeval_directly(gt_path, results_path, category_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(gt_path))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results_path)), iouType="segm")
        if category_ids is not None:
            evaluation.params.catIds = category_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_our_evaluation_equals_cocoeval_on_the_same_json(tmp_path):
    images, annotations, predictions = hand_made_split()
    results = results_of(predictions)
    ground_truth = coco_eval.ground_truth(images, annotations, CATEGORIES)
    ours = coco_eval.coco_metrics(ground_truth, results, [11, 12, 13], [3, None, 7])

    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(ground_truth.dataset))
    results_path.write_text(json.dumps(results))
    stats = cocoeval_directly(gt_path, results_path)
    reference = [100 * value if value >= 0 else np.nan for value in stats[:6]]  # -1: no instance of that size
    np.testing.assert_allclose([ours[key] for key in coco_eval.SUMMARY_KEYS], reference)
    assert np.isfinite(reference[3:5]).all()  # small and medium instances both scored
    assert 10 < ours["AP"] < 90  # neither trivial nor perfect
    # per class: COCOeval restricted to that category alone; the stuff class is not scored
    for k, category in ((0, 3), (2, 7)):
        np.testing.assert_allclose(ours["AP_per_class"][k], 100 * cocoeval_directly(gt_path, results_path, [category])[0])
    assert np.isnan(ours["AP_per_class"][1])


def test_records_decode_to_the_masks_and_keep_only_kept_instances():
    masks = np.stack([box_mask(9, 13, 1, 2, 5, 7), box_mask(9, 13, 0, 0, 9, 13), np.zeros((9, 13), bool)])
    records = coco_eval.prediction_records("ADE_val_1", np.asarray([0.5, 0.25, 0.125]), np.asarray([2, 0, 2]), masks,
                                           np.asarray([True, False, True]), (30, 40, 50))
    assert [(r["image_id"], r["category_id"], r["score"]) for r in records] == [("ADE_val_1", 50, 0.5), ("ADE_val_1", 50, 0.125)]
    for record, mask in zip(records, masks[[0, 2]]):
        assert record["segmentation"]["size"] == [9, 13] and isinstance(record["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())), mask)
    json.dumps(records)  # ready for the results file


def test_no_detection_scores_zero_for_classes_with_ground_truth():
    images, annotations, _ = hand_made_split()
    result = coco_eval.coco_metrics(coco_eval.ground_truth(images, annotations, CATEGORIES), [], [11, 12, 13], [3, 7])
    assert result["AP"] == 0 and result["AP_per_class"] == [0, 0]


def test_ground_truth_from_the_ade20k_panoptic_fixture(tmp_path):
    """Things become instances with the JSON's category ids, crowds iscrowd=1, stuff is left out."""
    from maskformer_jax.data.metadata import dataset_metadata
    from maskformer_jax.data.pipeline import build_source
    from tests.test_benchmark_datasets import ade20k_panoptic_config, write_ade20k_panoptic

    write_ade20k_panoptic(tmp_path, "validation")
    config = ade20k_panoptic_config(tmp_path)
    source = build_source(config.dataset, "validation")
    metadata = dataset_metadata(config.dataset, source)
    example = source[1]
    annotations = coco_eval.panoptic_ground_truth(example["image_id"], example["segments"], example["classes"],
                                                  example["iscrowd"], metadata.is_thing, metadata.category_ids)
    assert [(a["image_id"], a["category_id"], a["iscrowd"], a["area"]) for a in annotations] == [
        ("ADE_val_00000002", 7, 0, 12 * 16), ("ADE_val_00000002", 7, 1, 12 * 16)]
    decoded = mask_utils.decode(dict(annotations[1]["segmentation"], counts=annotations[1]["segmentation"]["counts"].encode()))
    np.testing.assert_array_equal(decoded, box_mask(24, 32, 12, 16, 24, 32))
    assert annotations[1]["bbox"] == [16, 12, 16, 12]


def test_instances_json_must_hold_the_evaluated_images_and_categories(tmp_path):
    from maskformer_jax.errors import DataError

    images, annotations, _ = hand_made_split()
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(coco_eval.ground_truth(images, annotations, CATEGORIES).dataset))
    assert coco_eval.load_ground_truth(path, [11, 13], [3, 7]).getImgIds() == [11, 12, 13]
    with pytest.raises(DataError, match="1 evaluated images are not in it"):
        coco_eval.load_ground_truth(path, [11, 14], [3, 7])
    with pytest.raises(DataError, match=r"thing categories \[5\]"):
        coco_eval.load_ground_truth(path, [11], [3, 5])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not a readable COCO instances JSON"):
        coco_eval.load_ground_truth(tmp_path / "bad.json", [11], [3])


def test_the_instance_task_needs_instance_ground_truth(tmp_path):
    """Cityscapes' semantic labels name thing classes but not their instances: refused, as is an
    instances JSON that is not there."""
    from maskformer_jax.errors import ConfigError
    from maskformer_jax.evaluation import Evaluator
    from maskformer_jax.predictor import validate
    from maskformer_jax.models import build_model
    from tests.test_benchmark_datasets import dataset_config, write_cityscapes

    write_cityscapes(tmp_path, "validation")
    config = dataset_config("cityscapes", tmp_path)
    config.model.num_classes, config.inference.task = 19, "instance"
    with pytest.raises(ConfigError, match="'cityscapes' data labels classes, not instances"):
        Evaluator(config, build_model(config.model))
    config.dataset.instances_json = "gtFine/instances_val.json"
    with pytest.raises(ConfigError, match="instances_json: .*gtFine/instances_val.json not found"):
        validate(config)
