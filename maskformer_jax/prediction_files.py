"""Predictions in the datasets' own formats: semantic class PNGs, and COCO panoptic PNG + JSON that
panopticapi's pq_compute reads (written whole or not at all: files.py).
"""

import json
import pathlib

import numpy as np

from maskformer_jax.files import write_json, write_png


def panoptic_segments(segment_map, segment_classes, is_thing):
    """Number the segments of `panoptic_inference` 1, 2, ... in query order, as the reference does.

    segment_map int [H, W] (query heading each pixel's segment, -1 void); segment_classes int [Q]
    (-1: the query heads no segment); is_thing bool [K] → (ids int32 [H, W], 0 void; segments_info:
    list of {"id", "class", "isthing"} for the segments with pixels).
    """
    segment_map, segment_classes = np.asarray(segment_map), np.asarray(segment_classes)
    heads = [int(q) for q in np.nonzero(segment_classes >= 0)[0] if (segment_map == q).any()]
    lookup = np.zeros(len(segment_classes) + 1, np.int32)  # index q + 1; -1 (void) → 0
    lookup[np.asarray(heads, np.int64) + 1] = np.arange(1, len(heads) + 1)
    info = [{"id": i + 1, "class": int(segment_classes[q]), "isthing": bool(is_thing[segment_classes[q]])}
            for i, q in enumerate(heads)]
    return lookup[segment_map + 1], info


def id_to_rgb(ids):
    """COCO panoptic colour code: int [H, W] → uint8 [H, W, 3] with id = R + 256 G + 256² B."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def coco_image_id(image_id: str):
    """COCO JSON uses integer image ids; keep other ids as strings."""
    return int(image_id) if image_id.isdigit() else image_id


class PredictionWriter:
    """Writes <directory>/semantic/<image_id>.png (contiguous class ids) and, for panoptic,
    <directory>/panoptic/<image_id>.png + <directory>/panoptic.json (COCO format, dataset category ids).

    With several processes each writes its own images and, on `close()`, a part file of panoptic
    annotations; `merge_panoptic_parts` then joins them into panoptic.json.
    """

    def __init__(self, directory, metadata, panoptic: bool, process_index: int = 0):
        self.directory, self.metadata, self.panoptic = pathlib.Path(directory), metadata, panoptic
        self.process_index = process_index
        (self.directory / "semantic").mkdir(parents=True, exist_ok=True)
        if panoptic:
            (self.directory / "panoptic").mkdir(parents=True, exist_ok=True)
        self.annotations = []

    def add(self, image_id: str, semantic_map, segment_map=None, segment_classes=None):
        """semantic_map int [H, W] (class per pixel); segment_map / segment_classes as `panoptic_segments`."""
        dtype = np.uint8 if len(self.metadata.class_names) <= 256 else np.uint16
        write_png(self.directory / "semantic" / f"{image_id}.png", np.asarray(semantic_map).astype(dtype))
        if not self.panoptic:
            return
        ids, info = panoptic_segments(segment_map, segment_classes, self.metadata.is_thing)
        write_png(self.directory / "panoptic" / f"{image_id}.png", id_to_rgb(ids))
        category = self.metadata.category_ids
        self.annotations.append({
            "image_id": coco_image_id(image_id),
            "file_name": f"{image_id}.png",
            "segments_info": [{"id": s["id"], "category_id": int(category[s["class"]]), "isthing": int(s["isthing"])}
                              for s in info],
        })

    def close(self):
        """Write this process's panoptic annotations to a part file."""
        if self.panoptic:
            write_json(self.directory / f".panoptic.part{self.process_index}.json", self.annotations)


def merge_panoptic_parts(directory, metadata):
    """Join every process's part file into <directory>/panoptic.json (once all have closed theirs)."""
    directory = pathlib.Path(directory)
    parts = sorted(directory.glob(".panoptic.part*.json"))
    annotations = [annotation for part in parts for annotation in json.loads(part.read_text())]
    write_json(directory / "panoptic.json", {"annotations": annotations, "categories": metadata.categories()})
    for part in parts:
        part.unlink()
