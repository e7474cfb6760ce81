"""Class names, thing/stuff flags and dataset category ids of the supported datasets."""

import dataclasses

import ml_collections
import numpy as np

from maskformer_jax.data import classes, sources, synthetic

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
        return make_metadata(classes.ADE20K_CLASS_NAMES, colors=classes.ADE20K_COLORS)
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
        return make_metadata(classes.ADE20K_CLASS_NAMES, classes.ADE20K_PANOPTIC_THING_CLASSES, colors=classes.ADE20K_COLORS)
    if dataset.name == "coco_panoptic":
        ids, names, things, colors = zip(*classes.COCO_PANOPTIC_CATEGORIES)
        return make_metadata(names, [k for k, thing in enumerate(things) if thing], ids, colors)
    return make_metadata([f"class_{k}" for k in range(dataset.num_classes)])
