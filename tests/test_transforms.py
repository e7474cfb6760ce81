"""Augmentations keep image and labels aligned, produce only legal labels, and follow the reference."""

import numpy as np
import pytest

from configs import tiny
from maskformer_jax.data import transforms
from maskformer_jax.data.synthetic import SyntheticSource
from maskformer_jax.data.targets import make_targets


def pattern(height=60, width=90):
    """An asymmetric block pattern whose image colour encodes the segment: red = 20 * segment."""
    y, x = np.mgrid[0:height, 0:width]
    segments = (y * 3 // height) * 4 + (x * 4 // width)  # 3 x 4 blocks of unequal aspect
    segments[:7, :11] = -1  # an ignore corner breaks the symmetry
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 20 * (segments + 1)
    image[..., 1] = (x * 255 // width).astype(np.uint8)  # a horizontal ramp shows flips
    return {"image": image, "segments": segments.astype(np.int32), "valid": np.ones((height, width), bool),
            "classes": np.arange(12, dtype=np.int32), "iscrowd": np.zeros(12, bool), "image_id": "pattern"}


def assert_aligned(example, interior_only=False):
    """Every valid pixel's red channel encodes its segment (away from block edges after resizing)."""
    red = example["image"][..., 0].astype(int)
    segments = example["segments"]
    consistent = red == 20 * (segments + 1)
    if interior_only:  # bilinear image vs nearest labels differ only near block edges
        padded = np.pad(segments, 2, mode="edge")
        height, width = segments.shape
        edge = np.zeros_like(consistent)
        for dy in range(5):
            for dx in range(5):
                edge |= padded[dy : dy + height, dx : dx + width] != segments
        consistent |= edge
        assert (~edge).mean() > 0.5  # most pixels are still checked
    assert consistent[example["valid"]].all()


def test_flip_crop_and_pad_keep_alignment_exactly():
    example = pattern()
    flipped = transforms.horizontal_flip(example, np.random.default_rng(0), probability=1.0)
    assert_aligned(flipped)
    assert flipped["image"][0, 0, 1] > flipped["image"][0, -1, 1]  # the ramp now decreases
    assert (flipped["segments"][:7, -11:] == -1).all()
    cropped = transforms.crop(example, 10, 20, 30, 40)
    assert_aligned(cropped)
    np.testing.assert_array_equal(cropped["segments"], example["segments"][10:40, 20:60])
    padded = transforms.pad(cropped, (48, 64))
    assert padded["image"].shape == (48, 64, 3)
    assert (padded["image"][30:] == 128).all() and (padded["segments"][:, 40:] == -1).all()
    assert not padded["valid"][30:].any() and padded["valid"][:30, :40].all()


@pytest.mark.parametrize("short,max_size", [(120, 1000), (30, 1000), (100, 120)])
def test_resize_shortest_edge_follows_detectron2_and_keeps_alignment(short, max_size):
    example = pattern()
    resized = transforms.resize_shortest_edge(example, np.random.default_rng(0), [short], max_size)
    expected = transforms.resized_shape(60, 90, short, max_size)
    assert resized["image"].shape[:2] == resized["segments"].shape == expected
    scale = min(short / 60, max_size / 90)
    assert expected == (int(60 * scale + 0.5), int(90 * scale + 0.5))
    assert_aligned(resized, interior_only=True)


def test_full_training_recipes_give_legal_targets():
    for name, config in (("semantic", tiny.get_config()), ("detr", tiny.get_config())):
        config.dataset.transform = name
        if name == "detr":  # canvases 64x96 and 96x64 hold every resize: short <= 64, long <= 96
            config.dataset.min_size_train, config.dataset.max_size_train = (48, 64), 96
            config.dataset.crop_min_sizes, config.dataset.crop_size_range = (48, 64), (32, 56)
        source = SyntheticSource(30, (96, 96), seed=5)
        shapes = set()
        for index in range(30):
            rng = np.random.default_rng(index)
            raw = source[index]
            example = transforms.TRAIN_TRANSFORMS[name](raw, rng, config.dataset)
            targets = make_targets(example, "panoptic", max_targets=10)
            assert targets["image"].dtype == np.uint8
            shapes.add(targets["image"].shape)
            labels, segments = targets["labels"], targets["segments"]
            count = int((labels >= 0).sum())
            assert count == len(raw["classes"])  # every segment is a target, with pixels left or not
            np.testing.assert_array_equal(labels[:count], raw["classes"])
            assert set(np.unique(segments)) <= set(range(-1, count))
            assert (segments[~targets["valid"]] == -1).all()
            if name == "detr":  # the image lies in the canvas of its orientation
                height, width = targets["valid"].any(1).sum(), targets["valid"].any(0).sum()
                assert targets["image"].shape[:2] == ((64, 96) if width > height else (96, 64))
        expected = {(64, 96, 3), (96, 64, 3)} if name == "detr" else {(*config.dataset.image_size, 3)}
        assert shapes == expected


def test_crop_rule_rejects_crops_dominated_by_one_class():
    """A 100x100 image, class 0 everywhere except a 20x20 patch of class 1: with a max single-class
    area of 0.9, 30x30 crops must contain enough of the patch whenever one of 10 tries finds such."""
    segments = np.zeros((100, 100), np.int32)
    segments[40:60, 40:60] = 1
    example = {"image": np.zeros((100, 100, 3), np.uint8), "segments": segments, "valid": np.ones((100, 100), bool)}
    accepted = 0
    for seed in range(50):
        crop = transforms.random_crop(example, np.random.default_rng(seed), (30, 30), 0.9, np.arange(2))
        counts = np.bincount(crop["segments"].ravel(), minlength=2)
        accepted += counts.max() / counts.sum() < 0.9
    # Without the rule a random crop has ≥10% of class 1 with probability ≈ 0.2; with 10 tries ≈ 0.9.
    assert accepted >= 35
    plain = sum(
        np.bincount(transforms.random_crop(example, np.random.default_rng(s), (30, 30))["segments"].ravel(),
                    minlength=2).max() / 900 < 0.9 for s in range(50))
    assert plain < 20


def test_color_jitter_is_deterministic_and_changes_only_the_image():
    example = pattern()
    first = transforms.color_jitter_ssd(example, np.random.default_rng(4))
    again = transforms.color_jitter_ssd(example, np.random.default_rng(4))
    np.testing.assert_array_equal(first["image"], again["image"])
    assert first["segments"] is example["segments"] and first["image"].dtype == np.uint8
    changed = [not np.array_equal(transforms.color_jitter_ssd(example, np.random.default_rng(s))["image"],
                                  example["image"]) for s in range(20)]
    assert 10 < sum(changed) < 20  # each op fires with probability 1/2, all four miss 1 time in 16


def test_evaluation_transform_keeps_the_original_size():
    example = transforms.evaluation(pattern(), short_sizes=(30, 10), max_size=40)
    assert (example["height"], example["width"]) == (60, 90) and example["segments"].shape == (60, 90)
    assert [view.shape for view in example["views"]] == [(27, 40, 3), (10, 15, 3)]  # the first capped at 40
