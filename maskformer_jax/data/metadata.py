"""Class names, thing/stuff flags and dataset category ids of the supported datasets."""

import dataclasses

import ml_collections
import numpy as np

from maskformer_jax.data import sources, synthetic

# COCO 2017 panoptic categories as in panopticapi's panoptic_coco_categories.json:

# (category_id, name, isthing), in increasing id order: contiguous class k is the k-th entry (detectron2's order).
COCO_PANOPTIC_CATEGORIES = (
    (1, "person", True),
    (2, "bicycle", True),
    (3, "car", True),
    (4, "motorcycle", True),
    (5, "airplane", True),
    (6, "bus", True),
    (7, "train", True),
    (8, "truck", True),
    (9, "boat", True),
    (10, "traffic light", True),
    (11, "fire hydrant", True),
    (13, "stop sign", True),
    (14, "parking meter", True),
    (15, "bench", True),
    (16, "bird", True),
    (17, "cat", True),
    (18, "dog", True),
    (19, "horse", True),
    (20, "sheep", True),
    (21, "cow", True),
    (22, "elephant", True),
    (23, "bear", True),
    (24, "zebra", True),
    (25, "giraffe", True),
    (27, "backpack", True),
    (28, "umbrella", True),
    (31, "handbag", True),
    (32, "tie", True),
    (33, "suitcase", True),
    (34, "frisbee", True),
    (35, "skis", True),
    (36, "snowboard", True),
    (37, "sports ball", True),
    (38, "kite", True),
    (39, "baseball bat", True),
    (40, "baseball glove", True),
    (41, "skateboard", True),
    (42, "surfboard", True),
    (43, "tennis racket", True),
    (44, "bottle", True),
    (46, "wine glass", True),
    (47, "cup", True),
    (48, "fork", True),
    (49, "knife", True),
    (50, "spoon", True),
    (51, "bowl", True),
    (52, "banana", True),
    (53, "apple", True),
    (54, "sandwich", True),
    (55, "orange", True),
    (56, "broccoli", True),
    (57, "carrot", True),
    (58, "hot dog", True),
    (59, "pizza", True),
    (60, "donut", True),
    (61, "cake", True),
    (62, "chair", True),
    (63, "couch", True),
    (64, "potted plant", True),
    (65, "bed", True),
    (67, "dining table", True),
    (70, "toilet", True),
    (72, "tv", True),
    (73, "laptop", True),
    (74, "mouse", True),
    (75, "remote", True),
    (76, "keyboard", True),
    (77, "cell phone", True),
    (78, "microwave", True),
    (79, "oven", True),
    (80, "toaster", True),
    (81, "sink", True),
    (82, "refrigerator", True),
    (84, "book", True),
    (85, "clock", True),
    (86, "vase", True),
    (87, "scissors", True),
    (88, "teddy bear", True),
    (89, "hair drier", True),
    (90, "toothbrush", True),
    (92, "banner", False),
    (93, "blanket", False),
    (95, "bridge", False),
    (100, "cardboard", False),
    (107, "counter", False),
    (109, "curtain", False),
    (112, "door-stuff", False),
    (118, "floor-wood", False),
    (119, "flower", False),
    (122, "fruit", False),
    (125, "gravel", False),
    (128, "house", False),
    (130, "light", False),
    (133, "mirror-stuff", False),
    (138, "net", False),
    (141, "pillow", False),
    (144, "platform", False),
    (145, "playingfield", False),
    (147, "railroad", False),
    (148, "river", False),
    (149, "road", False),
    (151, "roof", False),
    (154, "sand", False),
    (155, "sea", False),
    (156, "shelf", False),
    (159, "snow", False),
    (161, "stairs", False),
    (166, "tent", False),
    (168, "towel", False),
    (171, "wall-brick", False),
    (175, "wall-stone", False),
    (176, "wall-tile", False),
    (177, "wall-wood", False),
    (178, "water-other", False),
    (180, "window-blind", False),
    (181, "window-other", False),
    (184, "tree-merged", False),
    (185, "fence-merged", False),
    (186, "ceiling-merged", False),
    (187, "sky-other-merged", False),
    (188, "cabinet-merged", False),
    (189, "table-merged", False),
    (190, "floor-other-merged", False),
    (191, "pavement-merged", False),
    (192, "mountain-merged", False),
    (193, "grass-merged", False),
    (194, "dirt-merged", False),
    (195, "paper-merged", False),
    (196, "food-other-merged", False),
    (197, "building-other-merged", False),
    (198, "rock-merged", False),
    (199, "wall-other-merged", False),
    (200, "rug-merged", False),
)


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What inference and the outputs need to know of a dataset's classes."""

    class_names: tuple  # K names, by contiguous class
    is_thing: np.ndarray  # bool [K]: countable objects (each instance its own segment)
    category_ids: tuple  # K dataset category ids (COCO JSON), by contiguous class

    def categories(self) -> list[dict]:
        """COCO-style category list: {"id", "name", "isthing"}."""
        return [{"id": int(i), "name": name, "isthing": int(thing)}
                for i, name, thing in zip(self.category_ids, self.class_names, self.is_thing)]


def make_metadata(class_names, thing_classes=(), category_ids=None) -> Metadata:
    is_thing = np.zeros(len(class_names), bool)
    is_thing[list(thing_classes)] = True
    category_ids = tuple(range(len(class_names))) if category_ids is None else tuple(category_ids)
    return Metadata(tuple(class_names), is_thing, category_ids)


def dataset_metadata(dataset: ml_collections.ConfigDict, source=None) -> Metadata:
    """The classes of `config.dataset`: from its source when given (the COCO JSON's categories, a
    folder's classes.txt), else the built-in lists (synthetic, ADE20K-150, COCO panoptic) or a
    semantic_folder's classes.txt, else "class_<k>" names for config.dataset.num_classes classes."""
    if source is not None and hasattr(source, "class_names"):
        category_ids = None
        if hasattr(source, "category_to_class"):
            category_ids = sorted(source.category_to_class, key=source.category_to_class.get)
        return make_metadata(source.class_names, getattr(source, "thing_classes", ()), category_ids)
    if dataset.name == "synthetic":
        return make_metadata(synthetic.CLASS_NAMES, synthetic.THING_CLASSES)
    if dataset.name == "ade20k":
        return make_metadata(sources.ADE20K_CLASS_NAMES)
    if dataset.name == "semantic_folder":
        return make_metadata(sources.read_class_names(dataset.root))
    if dataset.name == "coco_panoptic":
        ids, names, things = zip(*COCO_PANOPTIC_CATEGORIES)
        return make_metadata(names, [k for k, thing in enumerate(things) if thing], ids)
    return make_metadata([f"class_{k}" for k in range(dataset.num_classes)])
