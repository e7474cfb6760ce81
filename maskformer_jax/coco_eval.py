"""Instance segmentation scored as COCO scores it: pycocotools' COCOeval with iouType "segm".

Masks are run-length encoded on the host one image at a time (pycocotools' `mask.encode`), so a
split never holds more than one image's masks. The ground truth is a COCO instances JSON, or is
derived from panoptic annotations: each thing segment an instance, crowd segments `iscrowd=1` (as
Mask2Former evaluates ADE20K instance segmentation). Records are plain dicts, ready for JSON.
"""

import contextlib
import io
import json
import pathlib

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskformer_jax.errors import DataError

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6], maxDets 100


def encode(masks) -> list[dict]:
    """bool [N, H, W] → N COCO RLEs with text `counts` (as the COCO results format stores them)."""
    masks = np.asarray(masks, np.uint8)
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def prediction_records(image_id, scores, classes, masks, kept, category_ids) -> list[dict]:
    """COCO results of one image from `postprocessing.instance_inference` (scores [k], classes int [k],
    masks bool [k, H, W] at the image's size, kept bool [k]): the kept instances, dataset category ids."""
    kept = np.flatnonzero(np.asarray(kept))
    return [{"image_id": image_id, "category_id": int(category_ids[classes[i]]), "segmentation": rle,
             "score": float(scores[i])} for i, rle in zip(kept, encode(np.asarray(masks)[kept]))]


def panoptic_ground_truth(image_id, segments, classes, iscrowd, is_thing, category_ids) -> list[dict]:
    """COCO annotations (without "id") of one image's thing segments: segments int [H, W] (segment
    index, -1 void), classes int [S], iscrowd bool [S], is_thing bool [K]."""
    things = [s for s in range(len(classes)) if is_thing[classes[s]]]
    masks = np.asarray(segments)[None] == np.asarray(things, np.int32).reshape(-1, 1, 1)
    present = masks.any((1, 2))
    things, masks = [s for s, keep in zip(things, present) if keep], masks[present]
    return [{"image_id": image_id, "category_id": int(category_ids[classes[s]]), "segmentation": rle,
             "area": float(mask.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": int(iscrowd[s])}
            for s, mask, rle in zip(things, masks, encode(masks))]


def ground_truth(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    """A COCO ground truth in memory; annotations are numbered 1, 2, ... (COCOeval needs ids > 0)."""
    dataset = {"images": images, "categories": categories,
               "annotations": [dict(annotation, id=i + 1) for i, annotation in enumerate(annotations)]}
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_ground_truth(path, image_ids, category_ids) -> COCO:
    """A COCO instances JSON (e.g. annotations/instances_val2017.json), checked to hold every
    evaluated image and the dataset's thing categories."""
    path = pathlib.Path(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a readable COCO instances JSON ({error!r}); set config.dataset.instances_json "
                        "to annotations/instances_val2017.json or leave it empty to use the panoptic annotations")
    missing = sorted(set(image_ids) - set(coco.getImgIds()), key=str)
    if missing:
        raise DataError(f"{path}: {len(missing)} evaluated images are not in it (first: {missing[0]!r}); it must "
                        "describe the evaluated split")
    unknown = sorted(set(category_ids) - set(coco.getCatIds()))
    if unknown:
        raise DataError(f"{path}: the dataset's thing categories {unknown} are not in it; it must use the "
                        "dataset's category ids")
    return coco


def coco_metrics(coco: COCO, results: list[dict], image_ids, category_ids) -> dict:
    """AP, AP50, AP75, APs, APm, APl (x100; NaN where the ground truth has no instance) over `image_ids`,
    and "AP_per_class": for each of `category_ids` (one per dataset class, None for classes not
    evaluated) the AP over IoU 0.50:0.95, NaN where the class has no ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:  # copies: loadRes adds "area" and "bbox" to the records it is given
            detections = coco.loadRes([dict(result) for result in results])
        else:  # loadRes refuses an empty list; no detection means AP 0 for every class with ground truth
            detections = ground_truth(coco.dataset["images"], [], coco.dataset["categories"])
        evaluation = COCOeval(coco, detections, iouType="segm")
        evaluation.params.imgIds = sorted(set(image_ids), key=str)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [100 * float(s) if s >= 0 else float("nan") for s in evaluation.stats[:len(SUMMARY_KEYS)]]
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall, category, area, max detections]
    column = {category: k for k, category in enumerate(evaluation.params.catIds)}
    per_class = []
    for category in category_ids:
        values = precision[:, :, column[category], 0, -1] if category in column else np.zeros(0)
        values = values[values > -1]
        per_class.append(100 * float(values.mean()) if values.size else float("nan"))
    return dict(zip(SUMMARY_KEYS, stats), AP_per_class=per_class)
