"""Our TensorFlow-free TFDS builders write array_record datasets that read back equal to the files."""

import numpy as np

from configs import tiny
from maskformer_jax.data.pipeline import build_source, train_pipeline
from maskformer_jax.data.sources import ade20k_source, coco_panoptic_source
from maskformer_jax.data.targets import make_targets
from maskformer_jax.data.tfds_builders import TfdsSource, prepare
from tests.test_data_sources import write_ade20k, write_coco


def assert_same_targets(ours, theirs, mode):
    a, b = make_targets(ours, mode, 8), make_targets(theirs, mode, 8)
    np.testing.assert_array_equal(a["segments"], b["segments"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image_id"] == b["image_id"]


def test_ade20k_semantic_builder_round_trip(tmp_path):
    write_ade20k(tmp_path, "training")
    write_ade20k(tmp_path, "validation")
    prepare("ade20k_semantic", tmp_path, tmp_path / "tfds")
    for split in ("train", "validation"):
        files, stored = ade20k_source(tmp_path, split), TfdsSource("ade20k_semantic", split, tmp_path / "tfds")
        assert len(stored) == len(files) == 2
        by_id = {stored[i]["image_id"]: stored[i] for i in range(len(stored))}  # TFDS shuffles the order
        for i in range(len(files)):
            assert_same_targets(by_id[files[i]["image_id"]], files[i], "semantic")
    expected = np.array([[-1, 0, 0, 149], [4, 4, -1, 149], [4, 1, 1, 1]])
    np.testing.assert_array_equal(by_id["ADE_validation_1"]["segments"], expected)


def test_coco_panoptic_builder_round_trip_and_grain(tmp_path):
    write_coco(tmp_path, "train")
    write_coco(tmp_path, "val")
    prepare("coco_panoptic", tmp_path, tmp_path / "tfds")
    files, stored = coco_panoptic_source(tmp_path, "val"), TfdsSource("coco_panoptic", "validation", tmp_path / "tfds")
    assert_same_targets(stored[0], files[0], "panoptic")
    np.testing.assert_array_equal(stored[0]["iscrowd"], [False, False, True, False])

    config = tiny.get_config()
    config.dataset.name, config.dataset.tfds_name, config.dataset.tfds_data_dir = "tfds", "coco_panoptic", str(tmp_path / "tfds")
    config.dataset.target_mode, config.batch_size = "panoptic", 2
    source = build_source(config.dataset, "train")
    batch = next(iter(train_pipeline(config, source, 0, 1)))
    assert batch["image"].shape == (2, 64, 64, 3) and list(batch["image_id"]) == ["42", "42"]
    assert set(batch["labels"][0][batch["labels"][0] >= 0]) <= {0, 1, 2}


def test_ade20k_panoptic_builder_reads_the_reference_layout(tmp_path):
    """prepare_ade20k_pan_seg.py's layout: images/{training,validation}, ade20k_panoptic_{train,val}[.json]."""
    coco = write_coco(tmp_path / "coco", "val")
    folder = tmp_path / "ADEChallengeData2016"
    for directory, short in (("training", "train"), ("validation", "val")):
        (folder / "images" / directory).mkdir(parents=True)
        (folder / "images" / directory / "000042.jpg").write_bytes((coco / "val2017/000042.jpg").read_bytes())
        (folder / f"ade20k_panoptic_{short}").mkdir()
        (folder / f"ade20k_panoptic_{short}" / "000042.png").write_bytes(
            (coco / "annotations/panoptic_val2017/000042.png").read_bytes())
        (folder / f"ade20k_panoptic_{short}.json").write_text((coco / "annotations/panoptic_val2017.json").read_text())
    prepare("ade20k_panoptic", tmp_path, tmp_path / "tfds")
    stored = TfdsSource("ade20k_panoptic", "train", tmp_path / "tfds")
    assert_same_targets(stored[0], coco_panoptic_source(coco, "val")[0], "panoptic")


def test_benchmark_builders_round_trip_16_bit_labels_and_their_ignore_values(tmp_path):
    from tests.test_benchmark_datasets import WRITERS
    from configs import base

    for name in ("ade20k_full", "mapillary_vistas", "cityscapes"):
        root = tmp_path / name
        write = WRITERS[name][0]
        write(root, "train")
        write(root, "validation")
        prepare(name, root, tmp_path / "tfds")
        ignore = base.SEMANTIC_BENCHMARKS[name]["ignore_label"]
        config = tiny.get_config()
        config.dataset.update(name=name, root=str(root), ignore_label=ignore)
        files = build_source(config.dataset, "validation")
        stored = TfdsSource(name, "validation", tmp_path / "tfds", ignore_label=ignore)
        by_id = {stored[i]["image_id"]: stored[i] for i in range(len(stored))}
        assert len(by_id) == len(files) == 2
        for i in range(len(files)):
            np.testing.assert_array_equal(by_id[files[i]["image_id"]]["segments"], files[i]["segments"])
            np.testing.assert_array_equal(by_id[files[i]["image_id"]]["image"], files[i]["image"])
