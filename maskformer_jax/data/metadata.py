"""Class names, thing/stuff flags and dataset category ids of the supported datasets."""

import dataclasses

import ml_collections
import numpy as np

from maskformer_jax.data import classes, sources, synthetic

# COCO 2017 panoptic categories as in panopticapi's panoptic_coco_categories.json:

# (category_id, name, isthing, RGB colour), in increasing id order: contiguous class k is the k-th entry
# (detectron2's order); the colours are panopticapi's (detectron2's COCO_CATEGORIES).
COCO_PANOPTIC_CATEGORIES = (
    (1, "person", True, (220, 20, 60)),
    (2, "bicycle", True, (119, 11, 32)),
    (3, "car", True, (0, 0, 142)),
    (4, "motorcycle", True, (0, 0, 230)),
    (5, "airplane", True, (106, 0, 228)),
    (6, "bus", True, (0, 60, 100)),
    (7, "train", True, (0, 80, 100)),
    (8, "truck", True, (0, 0, 70)),
    (9, "boat", True, (0, 0, 192)),
    (10, "traffic light", True, (250, 170, 30)),
    (11, "fire hydrant", True, (100, 170, 30)),
    (13, "stop sign", True, (220, 220, 0)),
    (14, "parking meter", True, (175, 116, 175)),
    (15, "bench", True, (250, 0, 30)),
    (16, "bird", True, (165, 42, 42)),
    (17, "cat", True, (255, 77, 255)),
    (18, "dog", True, (0, 226, 252)),
    (19, "horse", True, (182, 182, 255)),
    (20, "sheep", True, (0, 82, 0)),
    (21, "cow", True, (120, 166, 157)),
    (22, "elephant", True, (110, 76, 0)),
    (23, "bear", True, (174, 57, 255)),
    (24, "zebra", True, (199, 100, 0)),
    (25, "giraffe", True, (72, 0, 118)),
    (27, "backpack", True, (255, 179, 240)),
    (28, "umbrella", True, (0, 125, 92)),
    (31, "handbag", True, (209, 0, 151)),
    (32, "tie", True, (188, 208, 182)),
    (33, "suitcase", True, (0, 220, 176)),
    (34, "frisbee", True, (255, 99, 164)),
    (35, "skis", True, (92, 0, 73)),
    (36, "snowboard", True, (133, 129, 255)),
    (37, "sports ball", True, (78, 180, 255)),
    (38, "kite", True, (0, 228, 0)),
    (39, "baseball bat", True, (174, 255, 243)),
    (40, "baseball glove", True, (45, 89, 255)),
    (41, "skateboard", True, (134, 134, 103)),
    (42, "surfboard", True, (145, 148, 174)),
    (43, "tennis racket", True, (255, 208, 186)),
    (44, "bottle", True, (197, 226, 255)),
    (46, "wine glass", True, (171, 134, 1)),
    (47, "cup", True, (109, 63, 54)),
    (48, "fork", True, (207, 138, 255)),
    (49, "knife", True, (151, 0, 95)),
    (50, "spoon", True, (9, 80, 61)),
    (51, "bowl", True, (84, 105, 51)),
    (52, "banana", True, (74, 65, 105)),
    (53, "apple", True, (166, 196, 102)),
    (54, "sandwich", True, (208, 195, 210)),
    (55, "orange", True, (255, 109, 65)),
    (56, "broccoli", True, (0, 143, 149)),
    (57, "carrot", True, (179, 0, 194)),
    (58, "hot dog", True, (209, 99, 106)),
    (59, "pizza", True, (5, 121, 0)),
    (60, "donut", True, (227, 255, 205)),
    (61, "cake", True, (147, 186, 208)),
    (62, "chair", True, (153, 69, 1)),
    (63, "couch", True, (3, 95, 161)),
    (64, "potted plant", True, (163, 255, 0)),
    (65, "bed", True, (119, 0, 170)),
    (67, "dining table", True, (0, 182, 199)),
    (70, "toilet", True, (0, 165, 120)),
    (72, "tv", True, (183, 130, 88)),
    (73, "laptop", True, (95, 32, 0)),
    (74, "mouse", True, (130, 114, 135)),
    (75, "remote", True, (110, 129, 133)),
    (76, "keyboard", True, (166, 74, 118)),
    (77, "cell phone", True, (219, 142, 185)),
    (78, "microwave", True, (79, 210, 114)),
    (79, "oven", True, (178, 90, 62)),
    (80, "toaster", True, (65, 70, 15)),
    (81, "sink", True, (127, 167, 115)),
    (82, "refrigerator", True, (59, 105, 106)),
    (84, "book", True, (142, 108, 45)),
    (85, "clock", True, (196, 172, 0)),
    (86, "vase", True, (95, 54, 80)),
    (87, "scissors", True, (128, 76, 255)),
    (88, "teddy bear", True, (201, 57, 1)),
    (89, "hair drier", True, (246, 0, 122)),
    (90, "toothbrush", True, (191, 162, 208)),
    (92, "banner", False, (255, 255, 128)),
    (93, "blanket", False, (147, 211, 203)),
    (95, "bridge", False, (150, 100, 100)),
    (100, "cardboard", False, (168, 171, 172)),
    (107, "counter", False, (146, 112, 198)),
    (109, "curtain", False, (210, 170, 100)),
    (112, "door-stuff", False, (92, 136, 89)),
    (118, "floor-wood", False, (218, 88, 184)),
    (119, "flower", False, (241, 129, 0)),
    (122, "fruit", False, (217, 17, 255)),
    (125, "gravel", False, (124, 74, 181)),
    (128, "house", False, (70, 70, 70)),
    (130, "light", False, (255, 228, 255)),
    (133, "mirror-stuff", False, (154, 208, 0)),
    (138, "net", False, (193, 0, 92)),
    (141, "pillow", False, (76, 91, 113)),
    (144, "platform", False, (255, 180, 195)),
    (145, "playingfield", False, (106, 154, 176)),
    (147, "railroad", False, (230, 150, 140)),
    (148, "river", False, (60, 143, 255)),
    (149, "road", False, (128, 64, 128)),
    (151, "roof", False, (92, 82, 55)),
    (154, "sand", False, (254, 212, 124)),
    (155, "sea", False, (73, 77, 174)),
    (156, "shelf", False, (255, 160, 98)),
    (159, "snow", False, (255, 255, 255)),
    (161, "stairs", False, (104, 84, 109)),
    (166, "tent", False, (169, 164, 131)),
    (168, "towel", False, (225, 199, 255)),
    (171, "wall-brick", False, (137, 54, 74)),
    (175, "wall-stone", False, (135, 158, 223)),
    (176, "wall-tile", False, (7, 246, 231)),
    (177, "wall-wood", False, (107, 255, 200)),
    (178, "water-other", False, (58, 41, 149)),
    (180, "window-blind", False, (183, 121, 142)),
    (181, "window-other", False, (255, 73, 97)),
    (184, "tree-merged", False, (107, 142, 35)),
    (185, "fence-merged", False, (190, 153, 153)),
    (186, "ceiling-merged", False, (146, 139, 141)),
    (187, "sky-other-merged", False, (70, 130, 180)),
    (188, "cabinet-merged", False, (134, 199, 156)),
    (189, "table-merged", False, (209, 226, 140)),
    (190, "floor-other-merged", False, (96, 36, 108)),
    (191, "pavement-merged", False, (96, 96, 96)),
    (192, "mountain-merged", False, (64, 170, 64)),
    (193, "grass-merged", False, (152, 251, 152)),
    (194, "dirt-merged", False, (208, 229, 228)),
    (195, "paper-merged", False, (206, 186, 171)),
    (196, "food-other-merged", False, (152, 161, 64)),
    (197, "building-other-merged", False, (116, 112, 0)),
    (198, "rock-merged", False, (0, 114, 143)),
    (199, "wall-other-merged", False, (102, 102, 156)),
    (200, "rug-merged", False, (250, 141, 255)),
)


# The ADE20K-150 colours of classes 0..149 (the scene-parsing benchmark's palette, as the reference's
# register_ade20k_panoptic.py lists them).
ADE20K_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What inference and the outputs need to know of a dataset's classes."""

    class_names: tuple  # K names, by contiguous class
    is_thing: np.ndarray  # bool [K]: countable objects (each instance its own segment)
    category_ids: tuple  # K dataset category ids (COCO JSON), by contiguous class
    colors: np.ndarray | None = None  # uint8 [K, 3]: the dataset's own palette (None: visualize.palette)

    def categories(self) -> list[dict]:
        """COCO-style category list: {"id", "name", "isthing"}."""
        return [{"id": int(i), "name": name, "isthing": int(thing)}
                for i, name, thing in zip(self.category_ids, self.class_names, self.is_thing)]


def make_metadata(class_names, thing_classes=(), category_ids=None, colors=None) -> Metadata:
    is_thing = np.zeros(len(class_names), bool)
    is_thing[list(thing_classes)] = True
    category_ids = tuple(range(len(class_names))) if category_ids is None else tuple(category_ids)
    colors = None if colors is None else np.asarray(colors, np.uint8).reshape(len(class_names), 3)
    return Metadata(tuple(class_names), is_thing, category_ids, colors)


def dataset_metadata(dataset: ml_collections.ConfigDict, source=None) -> Metadata:
    """The classes of `config.dataset`: the built-in lists of the datasets with fixed classes
    (synthetic, ADE20K-150, COCO-Stuff-10K, ADE20K-Full, Cityscapes, Mapillary Vistas), else those of
    its source when given (the COCO JSON's categories, a folder's classes.txt), else the built-in
    lists (COCO panoptic, ADE20K panoptic) or a semantic_folder's classes.txt, else "class_<k>" names
    for config.dataset.num_classes classes."""
    if dataset.name == "synthetic":
        return make_metadata(synthetic.CLASS_NAMES, synthetic.THING_CLASSES, colors=synthetic.CLASS_COLORS)
    if dataset.name == "ade20k":
        return make_metadata(sources.ADE20K_CLASS_NAMES, colors=ADE20K_COLORS)
    if dataset.name == "coco_stuff_10k":
        ids, names = zip(*classes.COCO_STUFF_10K_CATEGORIES)
        return make_metadata(names, range(80), ids)
    if dataset.name == "ade20k_full":
        ids, names = zip(*classes.ADE20K_FULL_CATEGORIES)
        return make_metadata(names, category_ids=ids)
    if dataset.name == "cityscapes":
        names, ids, things, colors = zip(*classes.CITYSCAPES_CATEGORIES)
        return make_metadata(names, [k for k, thing in enumerate(things) if thing], ids, colors)
    if dataset.name == "mapillary_vistas":
        _, names, things, colors = zip(*classes.MAPILLARY_VISTAS_CATEGORIES)
        return make_metadata(names, [k for k, thing in enumerate(things) if thing], colors=colors)
    if source is not None and hasattr(source, "class_names"):
        category_ids = None
        if hasattr(source, "category_to_class"):
            category_ids = sorted(source.category_to_class, key=source.category_to_class.get)
        return make_metadata(source.class_names, getattr(source, "thing_classes", ()), category_ids,
                             getattr(source, "class_colors", None))
    if dataset.name == "semantic_folder":
        return make_metadata(sources.read_class_names(dataset.root))
    if dataset.name == "ade20k_panoptic":
        return make_metadata(sources.ADE20K_CLASS_NAMES, classes.ADE20K_PANOPTIC_THING_CLASSES, colors=ADE20K_COLORS)
    if dataset.name == "coco_panoptic":
        ids, names, things, colors = zip(*COCO_PANOPTIC_CATEGORIES)
        return make_metadata(names, [k for k, thing in enumerate(things) if thing], ids, colors)
    return make_metadata([f"class_{k}" for k in range(dataset.num_classes)])
