"""Random-access sources of raw examples, one per on-disk format, plus a built-in synthetic set.

Every source returns the same raw example, whatever the format:
  image       uint8 [H, W, 3] RGB
  segments    int32 [H, W]  index into the lists below, -1 for void / ignore
  classes     int32 [S]     contiguous class of each segment
  iscrowd     bool  [S]     crowd segments become ignore in the targets
  image_id    str
A semantic label map is the special case "segment k = class k" (S = K); a source whose segments are
instances says so with `labels_instances = True`. Bad files raise DataError
naming the file and the problem; what can be checked without decoding is checked at construction.
"""

import json
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from maskformer_jax.data import classes
from maskformer_jax.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# EXIF orientations that swap height and width (transpose, rotate 270, transverse, rotate 90).
_EXIF_ORIENTATION, _SWAPPING_ORIENTATIONS = 0x0112, (5, 6, 7, 8)


def read_image(path) -> np.ndarray:
    """uint8 [H, W, 3] RGB, with the file's EXIF orientation applied (as detectron2's read_image)."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({error})") from error


def read_label(path) -> np.ndarray:
    """The stored values of a label image: [H, W] for single-channel, [H, W, 3] for RGB; EXIF
    orientation applied, as detectron2 reads labels with the same read_image."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode == "P":  # palette PNGs store the label in the index, not the colour
                return np.asarray(image)
            return np.asarray(image.convert("RGB") if image.mode in ("RGB", "RGBA") else image)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable label ({error})") from error


def image_shape(path) -> tuple[int, int]:
    """(height, width) of an image file as `read_image` returns it, from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            return height, width
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable image ({error})") from error


def _check_same_size(image, label, image_path, label_path):
    if image.shape[:2] != label.shape[:2]:
        raise DataError(
            f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image "
            f"{image_path} size {image.shape[1]}x{image.shape[0]}"
        )


def _paired_files(image_dir: pathlib.Path, label_dir: pathlib.Path, label_suffix=".png", image_tag="", label_tag=""):
    """The images under image_dir (sub-folders included, as Cityscapes' cities), sorted, and each one's
    label: the same sub-folder of label_dir, the stem with `image_tag` replaced by `label_tag`, `label_suffix`."""
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.endswith(image_tag))
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    labels = [label_dir / p.parent.relative_to(image_dir) / (p.stem.removesuffix(image_tag) + label_tag + label_suffix)
              for p in images]
    return images, labels


def read_class_names(root) -> list[str]:
    """The class names of a semantic_folder dataset: root/classes.txt, one per line in label order."""
    names_file = pathlib.Path(root) / "classes.txt"
    if not names_file.is_file():
        raise DataError(f"{names_file}: class names file not found; write one class name per line, "
                        "the name of label 0 first (docs/own_data.md)")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{names_file}: no class names; write one per line, the name of label 0 first")
    return names


class SemanticFolderSource:
    """Images and single-channel label PNGs with the same stem, and a file of class names.

    root/images/<split>/*.jpg|png, root/labels/<split>/*.png, root/classes.txt (one name per line); the
    released benchmarks name the folders (`image_dir`, `label_dir`), nest images in sub-folders, tag
    the stems (Cityscapes' `_leftImg8bit` → `_gtFine_labelTrainIds`) or store 16-bit TIFF labels
    (`label_suffix`) in their own ways. Label values are class ids 0..K-1; `ignore_label` is ignore; `reduce_zero_label` maps 0 to ignore
    and v to v - 1 first (ADE20K's convention). Any other value is an error naming the file. Images
    without a label are an error at construction, or with `strict=False` (data.check, which lists
    them) when read.
    """

    def __init__(self, root, split: str, ignore_label: int = 255, reduce_zero_label: bool = False,
                 image_dir: str = "images", label_dir: str = "labels", class_names: Sequence[str] | None = None,
                 strict: bool = True, label_suffix: str = ".png", image_tag: str = "", label_tag: str = ""):
        root = pathlib.Path(root)
        self.class_names = list(read_class_names(root) if class_names is None else class_names)
        self.ignore_label = ignore_label
        self.reduce_zero_label = reduce_zero_label
        self.images, self.labels = _paired_files(root / image_dir / split, root / label_dir / split, label_suffix,
                                                 image_tag, label_tag)
        self.missing_labels = [path for path in self.labels if not path.is_file()]
        if self.missing_labels and strict:
            raise DataError(f"{len(self.missing_labels)} label files missing, e.g. {self.missing_labels[0]} "
                            "(python -m maskformer_jax.data.check lists them all)")

    def __len__(self):
        return len(self.images)

    def image_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, from the file headers."""
        return [image_shape(path) for path in self.images]

    def __getitem__(self, index):
        image = read_image(self.images[index])
        label = read_label(self.labels[index])
        if label.ndim != 2:
            raise DataError(f"{self.labels[index]}: expected a single-channel label image, got shape {label.shape}")
        _check_same_size(image, label, self.images[index], self.labels[index])
        label = label.astype(np.int32)
        ignore = label == self.ignore_label
        if self.reduce_zero_label:
            ignore |= label == 0
            label = label - 1
        num_classes = len(self.class_names)
        bad = ~ignore & ((label < 0) | (label >= num_classes))
        if bad.any():
            values = np.unique(label[bad] + int(self.reduce_zero_label))[:10].tolist()
            raise DataError(
                f"{self.labels[index]}: label values {values} are outside the {num_classes} classes "
                f"and not the ignore value {self.ignore_label}"
            )
        return {
            "image": image,
            "segments": np.where(ignore, -1, label).astype(np.int32),
            "classes": np.arange(num_classes, dtype=np.int32),
            "iscrowd": np.zeros(num_classes, bool),
            "image_id": self.images[index].stem,
        }


ADE20K_SPLITS = {"train": "training", "validation": "validation"}


def ade20k_source(root, split: str, strict: bool = True) -> SemanticFolderSource:
    """ADE20K-150 in its released layout: root/ADEChallengeData2016/{images,annotations}/{training,validation}.

    Label 0 ("other") is ignore and 1..150 become classes 0..149 (docs/reference.md §5).
    """
    folder = pathlib.Path(root) / "ADEChallengeData2016"
    if split not in ADE20K_SPLITS:
        raise DataError(f"ADE20K split must be one of {sorted(ADE20K_SPLITS)}, got {split!r}")
    return SemanticFolderSource(
        folder, ADE20K_SPLITS[split], ignore_label=255, reduce_zero_label=True, image_dir="images",
        label_dir="annotations", class_names=classes.ADE20K_CLASS_NAMES, strict=strict,
    )


def _split_folder(dataset: str, split: str, folders: dict) -> str:
    if split not in folders:
        raise DataError(f"{dataset} split must be one of {sorted(folders)}, got {split!r}")
    return folders[split]


def coco_stuff_10k_source(root, split: str, strict: bool = True) -> SemanticFolderSource:
    """COCO-Stuff-10K as the reference's prepare_coco_stuff_10k_v1.0_sem_seg.py writes it:
    root/{images,annotations}_detectron2/{train,test}/ (the test split is the validation split), JPEG
    images and PNG labels with classes 0..170 and 255 for ignore."""
    return SemanticFolderSource(
        root, _split_folder("COCO-Stuff-10K", split, {"train": "train", "validation": "test"}),
        image_dir="images_detectron2", label_dir="annotations_detectron2",
        class_names=[name for _, name in classes.COCO_STUFF_10K_CATEGORIES], strict=strict,
    )


def ade20k_full_source(root, split: str, strict: bool = True) -> SemanticFolderSource:
    """ADE20K-Full (847 classes) as the reference's prepare_ade20k_full_sem_seg.py writes it from the
    ADE20K_2021_17_01 release: root/{images,annotations}_detectron2/{training,validation}/, JPEG images
    and 16-bit TIFF labels with classes 0..846 and 65535 for ignore (config.dataset.ignore_label)."""
    return SemanticFolderSource(
        root, _split_folder("ADE20K-Full", split, ADE20K_SPLITS), ignore_label=65535, image_dir="images_detectron2",
        label_dir="annotations_detectron2", class_names=[name for _, name in classes.ADE20K_FULL_CATEGORIES],
        strict=strict, label_suffix=".tif",
    )


def cityscapes_source(root, split: str, strict: bool = True) -> SemanticFolderSource:
    """Cityscapes (19 classes) in its released layout after cityscapesscripts' createTrainIdLabelImgs:
    root/leftImg8bit/<split>/<city>/*_leftImg8bit.png and root/gtFine/<split>/<city>/
    *_gtFine_labelTrainIds.png (trainIds 0..18, 255 for ignore)."""
    return SemanticFolderSource(
        root, _split_folder("Cityscapes", split, {"train": "train", "validation": "val"}), image_dir="leftImg8bit",
        label_dir="gtFine", class_names=[name for name, *_ in classes.CITYSCAPES_CATEGORIES], strict=strict,
        image_tag="_leftImg8bit", label_tag="_gtFine_labelTrainIds",
    )


def mapillary_vistas_source(root, split: str, strict: bool = True) -> SemanticFolderSource:
    """Mapillary Vistas v1.2 in its released layout: root/{training,validation}/{images,labels}/, JPEG
    images and PNG labels with classes 0..64 and 65 ("void--unlabeled") for ignore."""
    return SemanticFolderSource(
        pathlib.Path(root) / _split_folder("Mapillary Vistas", split, ADE20K_SPLITS), "", ignore_label=65,
        class_names=[readable for _, readable, *_ in classes.MAPILLARY_VISTAS_CATEGORIES], strict=strict,
    )


def ade20k_panoptic_source(root, split: str) -> "CocoPanopticSource":
    """ADE20K panoptic as the reference's prepare_ade20k_pan_seg.py writes it into root/ADEChallengeData2016/:
    ade20k_panoptic_{train,val}.json, the PNG folders beside them, and the images of images/{training,validation}."""
    folder = pathlib.Path(root) / "ADEChallengeData2016"
    short = _split_folder("ADE20K panoptic", split, {"train": "train", "validation": "val"})
    return CocoPanopticSource(folder / "images" / ADE20K_SPLITS[split], folder / f"ade20k_panoptic_{short}.json",
                              folder / f"ade20k_panoptic_{short}")


class CocoPanopticSource:
    """COCO-panoptic format: a JSON file (images, annotations with segments_info, categories with
    isthing) and a folder of PNGs whose RGB encodes segment ids (id = R + 256 G + 256^2 B, 0 = void).

    Category ids are mapped to contiguous classes in the order of their ids. Serves COCO panoptic and
    ADE20K / Cityscapes panoptic converted to this format.
    """

    labels_instances = True

    def __init__(self, image_dir, annotation_json, annotation_dir):
        self.image_dir, self.annotation_dir = pathlib.Path(image_dir), pathlib.Path(annotation_dir)
        annotation_json = pathlib.Path(annotation_json)
        try:
            data = json.loads(annotation_json.read_text())
            categories = sorted(data["categories"], key=lambda c: c["id"])
            annotations = data["annotations"]
            files = {image["id"]: image for image in data["images"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{annotation_json}: not a COCO panoptic annotation file ({error!r})") from error
        self.class_names = [c["name"] for c in categories]
        self.thing_classes = [i for i, c in enumerate(categories) if c.get("isthing", 0)]
        self.category_to_class = {c["id"]: i for i, c in enumerate(categories)}
        if all(len(c.get("color", ())) == 3 for c in categories):  # panopticapi's files give a colour each
            self.class_colors = [c["color"] for c in categories]
        self.annotations = sorted(annotations, key=lambda a: str(a["image_id"]))
        if not self.annotations:
            raise DataError(f"{annotation_json}: no annotations")
        for annotation in self.annotations:
            if annotation["image_id"] not in files:
                raise DataError(f"{annotation_json}: annotation of unknown image id {annotation['image_id']}")
            image = files[annotation["image_id"]]
            annotation["image_file"] = image["file_name"]
            if "height" in image:
                annotation["height"], annotation["width"] = int(image["height"]), int(image["width"])
            for segment in annotation["segments_info"]:
                if segment["category_id"] not in self.category_to_class:
                    raise DataError(
                        f"{annotation_json}: segment {segment['id']} of image {annotation['image_id']} has "
                        f"unknown category id {segment['category_id']}"
                    )
        missing = [str(self.image_dir / a["image_file"]) for a in self.annotations
                   if not (self.image_dir / a["image_file"]).is_file()]
        missing += [str(self.annotation_dir / a["file_name"]) for a in self.annotations
                    if not (self.annotation_dir / a["file_name"]).is_file()]
        if missing:
            raise DataError(f"{len(missing)} files missing, e.g. {missing[0]}")

    def __len__(self):
        return len(self.annotations)

    def image_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every image as the JSON lists it (detectron2 checks images against it),
        or from the file's header where the JSON has no size."""
        return [(a["height"], a["width"]) if "height" in a else image_shape(self.image_dir / a["image_file"])
                for a in self.annotations]

    def __getitem__(self, index):
        annotation = self.annotations[index]
        image_path = self.image_dir / annotation["image_file"]
        label_path = self.annotation_dir / annotation["file_name"]
        info = annotation["segments_info"]
        return panoptic_example(
            read_image(image_path),
            read_label(label_path),
            segment_ids=[s["id"] for s in info],
            classes=[self.category_to_class[s["category_id"]] for s in info],
            iscrowd=[bool(s.get("iscrowd", 0)) for s in info],
            image_id=str(annotation["image_id"]),
            names=(image_path, label_path),
        )


def panoptic_example(image, rgb, segment_ids, classes, iscrowd, image_id: str, names=("image", "label")):
    """The raw example of a COCO-style panoptic annotation: an RGB PNG whose colour encodes segment
    ids (id = R + 256 G + 256^2 B, 0 = void) and the ids, classes and crowd flags of its segments.
    `names` (image, label) name the files in errors."""
    if rgb.ndim != 3:
        raise DataError(f"{names[1]}: expected an RGB panoptic PNG, got shape {rgb.shape}")
    _check_same_size(image, rgb, *names)
    rgb = rgb.astype(np.int32)  # ids < 2^24
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    known_ids = np.array(list(segment_ids) + [0], np.int32)  # 0 (void) last → index -1 below
    order = np.argsort(known_ids)
    position = np.searchsorted(known_ids[order], ids)
    known = known_ids[order][np.minimum(position, len(known_ids) - 1)] == ids
    if not known.all():
        unknown = np.unique(ids[~known])[:10].tolist()
        raise DataError(f"{names[1]}: segment ids {unknown} are not in the segments_info of the JSON")
    segments = order[position].astype(np.int32)
    segments[ids == 0] = -1
    return {
        "image": image,
        "segments": segments,
        "classes": np.asarray(classes, np.int32).reshape(-1),
        "iscrowd": np.asarray(iscrowd, bool).reshape(-1),
        "image_id": image_id,
    }


def coco_panoptic_source(root, split: str) -> CocoPanopticSource:
    """COCO's released layout: root/{split}2017/*.jpg, root/annotations/panoptic_{split}2017.json and
    root/annotations/panoptic_{split}2017/*.png (split "train" or "val")."""
    root = pathlib.Path(root)
    return CocoPanopticSource(
        root / f"{split}2017",
        root / "annotations" / f"panoptic_{split}2017.json",
        root / "annotations" / f"panoptic_{split}2017",
    )
