"""Sources read the real on-disk formats (fixtures written here) and name every bad file."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from maskformer_jax.data.check import check
from maskformer_jax.data.sources import CocoPanopticSource, SemanticFolderSource, ade20k_source
from maskformer_jax.data.synthetic import SyntheticSource
from maskformer_jax.data.targets import make_targets
from maskformer_jax.errors import DataError


def write_image(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_label(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint8)).save(path)


ADE_LABEL = [[0, 1, 1, 150], [5, 5, 0, 150], [5, 2, 2, 2]]


def write_ade20k(root, split="training"):
    """Two examples in ADE20K's released layout."""
    folder = root / "ADEChallengeData2016"
    write_image(folder / f"images/{split}/ADE_{split}_1.jpg", 3, 4)
    write_label(folder / f"annotations/{split}/ADE_{split}_1.png", ADE_LABEL)
    write_image(folder / f"images/{split}/ADE_{split}_2.jpg", 2, 2, seed=1)
    write_label(folder / f"annotations/{split}/ADE_{split}_2.png", [[3, 3], [3, 0]])
    return root


@pytest.fixture
def ade20k(tmp_path):
    return write_ade20k(tmp_path)


def test_ade20k_label_zero_is_ignore_and_classes_shift_down(ade20k):
    source = ade20k_source(ade20k, "train")
    assert len(source) == 2
    example = source[0]
    expected = np.array([[-1, 0, 0, 149], [4, 4, -1, 149], [4, 1, 1, 1]])
    np.testing.assert_array_equal(example["segments"], expected)
    assert example["image"].shape == (3, 4, 3) and example["image_id"] == "ADE_training_1"
    targets = make_targets(example, "semantic", max_targets=6)
    # Classes present in sorted order: 0, 1, 4, 149 → slots 0..3.
    np.testing.assert_array_equal(targets["labels"], [0, 1, 4, 149, -1, -1])
    np.testing.assert_array_equal(targets["segments"], [[-1, 0, 0, 3], [2, 2, -1, 3], [2, 1, 1, 1]])


def test_semantic_folder_with_ignore_value(tmp_path):
    (tmp_path / "classes.txt").write_text("road\ncar\ntree\n")
    write_image(tmp_path / "images/val/a.png", 2, 3)
    write_label(tmp_path / "labels/val/a.png", [[0, 2, 255], [2, 2, 1]])
    source = SemanticFolderSource(tmp_path, "val", ignore_label=255)
    assert source.class_names == ["road", "car", "tree"]
    np.testing.assert_array_equal(source[0]["segments"], [[0, 2, -1], [2, 2, 1]])


def encode_ids(ids):
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def write_coco(root, split="val"):
    """One image in COCO panoptic's released layout, with a crowd segment."""
    ids = [[0, 300, 300, 70000], [5, 5, 300, 70000], [5, 5, 9, 9]]
    annotation = {
        "images": [{"id": 42, "file_name": "000042.jpg", "height": 3, "width": 4}],
        "categories": [{"id": 7, "name": "sky", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1},
                       {"id": 3, "name": "car", "isthing": 1}],
        "annotations": [{"image_id": 42, "file_name": "000042.png", "segments_info": [
            {"id": 300, "category_id": 1, "iscrowd": 0},
            {"id": 5, "category_id": 7, "iscrowd": 0},
            {"id": 70000, "category_id": 1, "iscrowd": 1},
            {"id": 9, "category_id": 3, "iscrowd": 0}]}],
    }
    (root / f"annotations/panoptic_{split}2017").mkdir(parents=True)
    (root / f"annotations/panoptic_{split}2017.json").write_text(json.dumps(annotation))
    Image.fromarray(encode_ids(ids)).save(root / f"annotations/panoptic_{split}2017/000042.png")
    write_image(root / f"{split}2017/000042.jpg", 3, 4)
    return root


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path)


def coco_source(root):
    return CocoPanopticSource(root / "val2017", root / "annotations/panoptic_val2017.json",
                              root / "annotations/panoptic_val2017")


def test_coco_panoptic_ids_crowd_and_contiguous_classes(coco):
    source = coco_source(coco)
    assert source.class_names == ["person", "car", "sky"] and source.thing_classes == [0, 1]
    example = source[0]
    np.testing.assert_array_equal(example["segments"], [[-1, 0, 0, 2], [1, 1, 0, 2], [1, 1, 3, 3]])
    np.testing.assert_array_equal(example["classes"], [0, 2, 0, 1])
    np.testing.assert_array_equal(example["iscrowd"], [False, False, True, False])
    targets = make_targets(example, "panoptic", max_targets=5)
    # Crowd (segment 2) becomes ignore; segments 0, 1, 3 take slots 0, 1, 2.
    np.testing.assert_array_equal(targets["segments"], [[-1, 0, 0, -1], [1, 1, 0, -1], [1, 1, 2, 2]])
    np.testing.assert_array_equal(targets["labels"], [0, 2, 1, -1, -1])


def test_coco_png_id_missing_from_json_is_named(coco):
    png = coco / "annotations/panoptic_val2017/000042.png"
    Image.fromarray(encode_ids([[0, 300, 12, 12]] * 3)).save(png)
    with pytest.raises(DataError, match=r"000042\.png: segment ids \[12\] are not in the segments_info"):
        coco_source(coco)[0]


def test_truncated_jpeg_is_named(ade20k):
    path = ade20k / "ADEChallengeData2016/images/training/ADE_training_1.jpg"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[:200])
    write_label(ade20k / "ADEChallengeData2016/annotations/training/ADE_training_1.png", np.ones((64, 64)))
    with pytest.raises(DataError, match=r"ADE_training_1\.jpg: unreadable image"):
        ade20k_source(ade20k, "train")[0]


def test_label_out_of_range_is_named(ade20k):
    write_label(ade20k / "ADEChallengeData2016/annotations/training/ADE_training_2.png", [[3, 200], [151, 0]])
    with pytest.raises(DataError, match=r"ADE_training_2\.png: label values \[151, 200\] are outside the 150 classes"):
        ade20k_source(ade20k, "train")[1]


def test_size_mismatch_is_named(ade20k):
    write_label(ade20k / "ADEChallengeData2016/annotations/training/ADE_training_2.png", [[3, 3, 3]])
    with pytest.raises(DataError, match=r"ADE_training_2\.png: label size 3x1 differs from image .*ADE_training_2\.jpg size 2x2"):
        ade20k_source(ade20k, "train")[1]


def test_missing_label_and_empty_split_are_named(ade20k):
    (ade20k / "ADEChallengeData2016/annotations/training/ADE_training_2.png").unlink()
    with pytest.raises(DataError, match=r"1 label files missing, e.g. .*ADE_training_2\.png"):
        ade20k_source(ade20k, "train")
    (ade20k / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    with pytest.raises(DataError, match=r"images/validation: no images"):
        ade20k_source(ade20k, "validation")


def test_too_many_segments_is_named_unless_dropping_the_smallest(coco):
    example = coco_source(coco)[0]
    with pytest.raises(DataError, match="image 42 has 3 targets, more than max_targets=2"):
        make_targets(example, "panoptic", max_targets=2)
    targets = make_targets(example, "panoptic", max_targets=2, drop_smallest=True)
    # Segment 3 (2 pixels) is the smallest: dropped to ignore; segments 0 (3 px) and 1 (4 px) stay.
    np.testing.assert_array_equal(targets["labels"], [0, 2])
    np.testing.assert_array_equal(targets["segments"], [[-1, 0, 0, -1], [1, 1, 0, -1], [1, 1, -1, -1]])


def test_check_command_reports_every_problem(ade20k, capsys):
    write_label(ade20k / "ADEChallengeData2016/annotations/training/ADE_training_2.png", [[3, 200], [1, 0]])
    config = tiny.get_config()
    config.dataset.name, config.dataset.root, config.model.num_classes = "ade20k", str(ade20k), 150
    assert check(config, "train") == 1
    report = capsys.readouterr().out
    assert "ade20k train: 2 examples, 1 problems" in report
    assert "PROBLEM" in report and "ADE_training_2.png: label values [200]" in report
    assert "most targets in one image: 4 (ADE_training_1)" in report


def test_synthetic_set_is_deterministic_and_not_trivial():
    source = SyntheticSource(40, (96, 96), seed=3)
    np.testing.assert_array_equal(source[7]["image"], SyntheticSource(40, (96, 96), seed=3)[7]["image"])
    assert not np.array_equal(source[7]["image"], SyntheticSource(40, (96, 96), seed=4)[7]["image"])
    classes = [set(source[i]["classes"].tolist()) for i in range(40)]
    assert set().union(*classes) == set(range(7))  # every stuff and thing class occurs
    counts = [len(source[i]["classes"]) for i in range(40)]
    assert min(counts) >= 2 and max(counts) >= 6  # stuff plus several things
    thing_counts = [np.isin(source[i]["classes"], [4, 5, 6]).sum() for i in range(40)]
    assert max(thing_counts) >= 3
    example = source[0]
    assert example["segments"].min() == 0 or example["segments"].min() == -1
    assert example["segments"].max() == len(example["classes"]) - 1  # every listed segment is visible
