"""TensorFlow-free TFDS builders (array_record) for the released dataset files, and a source that
reads any array_record TFDS dataset (ours, or `coco/2017_panoptic` prepared elsewhere) with grain.

    python -m maskformer_jax.data.tfds_builders --dataset ade20k_semantic --source_dir /data/ade \\
        --data_dir ~/tensorflow_datasets

Examples are decoded and checked with the folder sources while preparing, so a bad file stops the
preparation with its name before anything is published (TFDS writes to a temporary folder).
Images are stored as their original encoded bytes; label maps as PNG.
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from PIL import Image

from maskformer_jax.data import sources

_PANOPTIC_SEGMENT = {"id": np.int64, "class": np.int64, "iscrowd": np.bool_}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class _Semantic(tfds.core.GeneratorBasedBuilder):
    """A semantic benchmark: the image's encoded bytes and its label map as PNG (classes 0..K-1 and the
    dataset's ignore value, which config.dataset.ignore_label names)."""

    VERSION = tfds.core.Version("1.0.0")
    LABEL_DTYPE, IGNORE = np.uint8, 255  # ADE20K-Full: 16-bit labels, 65535

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.Image(shape=(None, None, 1), dtype=self.LABEL_DTYPE),
                "image_id": tfds.features.Text(),
            })
        )

    SOURCE = None  # (root, split) → the dataset's source (data/sources.py)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(self.SOURCE(dl_manager.manual_dir, split)) for split in ("train", "validation")}

    def _generate_examples(self, source):
        for index in range(len(source)):
            example = source[index]  # decodes and checks the files
            label = np.where(example["segments"] < 0, self.IGNORE, example["segments"]).astype(self.LABEL_DTYPE)
            yield example["image_id"], {
                "image": str(source.images[index]),
                "label": _png(label),
                "image_id": example["image_id"],
            }


class Ade20kSemantic(_Semantic):
    """ADEChallengeData2016 (150 classes): label PNGs store classes 0..149 and 255 for ignore."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder that holds ADEChallengeData2016/ as the source folder."
    SOURCE = staticmethod(sources.ade20k_source)


class CocoStuff10k(_Semantic):
    """COCO-Stuff-10K (171 classes; its test split as validation)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the coco_stuff_10k folder that prepare_coco_stuff_10k_v1.0_sem_seg.py wrote."
    SOURCE = staticmethod(sources.coco_stuff_10k_source)


class Ade20kFull(_Semantic):
    """ADE20K-Full (847 classes; 16-bit labels, 65535 for ignore)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the ADE20K_2021_17_01 folder that prepare_ade20k_full_sem_seg.py wrote into."
    LABEL_DTYPE, IGNORE = np.uint16, 65535
    SOURCE = staticmethod(sources.ade20k_full_source)


class Cityscapes(_Semantic):
    """Cityscapes fine (19 classes, trainId labels)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the cityscapes folder with leftImg8bit/ and gtFine/ (*_labelTrainIds.png)."
    SOURCE = staticmethod(sources.cityscapes_source)


class MapillaryVistas(_Semantic):
    """Mapillary Vistas v1.2 (65 classes; 65 for ignore, as the released labels)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the mapillary_vistas folder with training/ and validation/."
    IGNORE = 65
    SOURCE = staticmethod(sources.mapillary_vistas_source)


class _Panoptic(tfds.core.GeneratorBasedBuilder):
    """COCO-format panoptic data: the panoptic PNG and each segment's id, contiguous class, crowd flag."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "panoptic": tfds.features.Image(shape=(None, None, 3)),
                "segments": tfds.features.Sequence(_PANOPTIC_SEGMENT),
                "image_id": tfds.features.Text(),
            })
        )

    def _sources(self, root):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(source) for split, source in self._sources(dl_manager.manual_dir).items()}

    def _generate_examples(self, source):
        for index, annotation in enumerate(source.annotations):
            example = source[index]  # decodes and checks the files
            yield example["image_id"], {
                "image": str(source.image_dir / annotation["image_file"]),
                "panoptic": str(source.annotation_dir / annotation["file_name"]),
                "segments": [
                    {"id": s["id"], "class": int(c), "iscrowd": bool(crowd)}
                    for s, c, crowd in zip(annotation["segments_info"], example["classes"], example["iscrowd"])
                ],
                "image_id": example["image_id"],
            }


class CocoPanoptic(_Panoptic):
    """COCO panoptic 2017 (133 classes) from its released layout."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the COCO folder (train2017/, val2017/, annotations/panoptic_*2017.json and folders)."

    def _sources(self, root):
        return {"train": sources.coco_panoptic_source(root, "train"), "validation": sources.coco_panoptic_source(root, "val")}


class Ade20kPanoptic(_Panoptic):
    """ADE20K panoptic (150 classes) as the reference's prepare_ade20k_pan_seg.py writes it."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder that holds ADEChallengeData2016/ with ade20k_panoptic_{train,val}."

    def _sources(self, root):
        return {split: sources.ade20k_panoptic_source(root, split) for split in ("train", "validation")}


BUILDERS = {"ade20k_semantic": Ade20kSemantic, "coco_panoptic": CocoPanoptic, "ade20k_panoptic": Ade20kPanoptic,
            "coco_stuff_10k": CocoStuff10k, "ade20k_full": Ade20kFull, "cityscapes": Cityscapes,
            "mapillary_vistas": MapillaryVistas}


class TfdsSource:
    """Raw examples from an array_record TFDS dataset, read without TensorFlow.

    Understands our builders' features and the catalog's `coco/2017_panoptic` (pass the version
    explicitly, e.g. "coco/2017_panoptic:1.1.0").
    """

    def __init__(self, name: str, split: str, data_dir=None, ignore_label: int = 255):
        try:
            self.data = tfds.data_source(name, data_dir=data_dir)[split]
        except Exception as error:  # TFDS raises several types for a missing or unprepared dataset
            raise sources.DataError(f"TFDS dataset {name!r} split {split!r} in {data_dir}: {error}") from error
        self.name, self.ignore_label = name, ignore_label
        self.labels_instances = "label" not in self.data.dataset_info.features  # panoptic features

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        example = self.data[index]
        if "label" in example:  # semantic
            label = np.asarray(example["label"])[..., 0].astype(np.int32)
            num_classes = int(label[label != self.ignore_label].max(initial=-1)) + 1
            return {
                "image": np.asarray(example["image"]),
                "segments": np.where(label == self.ignore_label, -1, label).astype(np.int32),
                "classes": np.arange(max(num_classes, 1), dtype=np.int32),
                "iscrowd": np.zeros(max(num_classes, 1), bool),
                "image_id": _text(example["image_id"]),
            }
        if "panoptic_image" in example:  # the TFDS catalog's coco/2017_panoptic
            objects = example["panoptic_objects"]
            return sources.panoptic_example(
                np.asarray(example["image"]), np.asarray(example["panoptic_image"]), objects["id"], objects["label"],
                objects["is_crowd"], _text(example["image/id"]), (f"{self.name}[{index}]",) * 2,
            )
        segments = example["segments"]
        return sources.panoptic_example(
            np.asarray(example["image"]), np.asarray(example["panoptic"]), segments["id"], segments["class"],
            segments["iscrowd"], _text(example["image_id"]), (f"{self.name}[{index}]",) * 2,
        )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def prepare(dataset: str, source_dir, data_dir) -> None:
    """Write `dataset` (a key of BUILDERS) from the released files in `source_dir` into `data_dir`."""
    builder = BUILDERS[dataset](data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source_dir)))


def main():
    # Flags are defined here, not at import, so that importing this module defines none.
    dataset = flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Dataset to prepare.")
    source_dir = flags.DEFINE_string("source_dir", None, "Folder with the released files.")
    data_dir = flags.DEFINE_string("data_dir", None, "TFDS data folder to write to.")
    flags.mark_flags_as_required(["dataset", "source_dir", "data_dir"])

    def run(argv):
        prepare(dataset.value, source_dir.value, data_dir.value)
        print(f"prepared {dataset.value} in {data_dir.value}")

    app.run(run)


if __name__ == "__main__":
    main()
