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


def detectron2_output_shape(oldh, oldw, short_edge_length, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape, restated."""
    h, w = oldh, oldw
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def test_resized_shape_is_detectron2s_get_output_shape():
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(1, 3000, 200_000), rng.integers(1, 3000, 200_000)
    shorts, max_sizes = rng.integers(32, 1400, 200_000), rng.integers(200, 2600, 200_000)
    ours = np.stack(transforms.resized_shape(heights, widths, shorts, max_sizes[0]), 1)
    expected = [detectron2_output_shape(h, w, s, max_sizes[0]) for h, w, s in zip(heights, widths, shorts)]
    np.testing.assert_array_equal(ours, expected)
    for h, w, s, m in list(zip(heights, widths, shorts, max_sizes))[:20_000]:  # scalar form, varying caps
        assert transforms.resized_shape(h, w, s, m) == detectron2_output_shape(h, w, s, m)


@pytest.mark.parametrize("size", [(77, 130), (200, 333), (45, 31)])
def test_semantic_labels_resize_as_torch_interpolate_nearest(size):
    """The semantic mapper casts labels to float and resizes them with F.interpolate(mode="nearest")."""
    import torch
    import torch.nn.functional as F

    example = pattern()
    resized = transforms.resize(example, *size, label_rule="torch")
    label = torch.from_numpy(example["segments"].astype(np.float64))[None, None]
    expected = F.interpolate(label, size, mode="nearest")[0, 0].numpy().astype(np.int32)
    np.testing.assert_array_equal(resized["segments"], expected)
    pil = transforms.resize(example, *size)["segments"]  # the panoptic (uint8 PNG) rule differs here
    assert (pil != expected).any()


def reference_category_area_crop(segments, classes, rng, size, max_area):
    """detectron2's RandomCrop_CategoryAreaConstraint.get_transform (crop type "absolute"), restated
    with our generator: 10 draws, the first that passes or else the 10th."""
    h, w = segments.shape
    crop_h, crop_w = min(size[0], h), min(size[1], w)
    for _ in range(10):
        y0, x0 = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
        window = segments[y0: y0 + crop_h, x0: x0 + crop_w]
        labels, count = np.unique(np.where(window >= 0, classes[np.maximum(window, 0)], -1), return_counts=True)
        count = count[labels != -1]
        if len(count) > 1 and np.max(count) < np.sum(count) * max_area:
            break
    return y0, x0


def test_category_area_crop_draws_as_the_reference():
    segments = np.zeros((100, 100), np.int32)
    segments[40:60, 40:60] = 1
    segments[:5] = -1
    example = {"image": np.arange(100 * 100 * 3).reshape(100, 100, 3), "segments": segments,
               "valid": np.ones((100, 100), bool)}
    for seed in range(60):
        for max_area in (0.9, 0.5):  # 0.5 never passes: the 10th draw is kept
            crop = transforms.random_crop(example, np.random.default_rng(seed), (30, 30), max_area, np.arange(2))
            rng = np.random.default_rng(seed)
            y0, x0 = reference_category_area_crop(segments, np.arange(2), rng, (30, 30), max_area)
            np.testing.assert_array_equal(crop["image"], example["image"][y0:y0 + 30, x0:x0 + 30])


def test_detr_plan_follows_the_reference_mapper():
    """Flip; crop branch: ResizeShortestEdge([400, 500, 600]) with no long-side cap, then an
    absolute_range crop; then ResizeShortestEdge(min_size_train, max_size_train)."""
    from configs import coco_panoptic_r50

    dataset = coco_panoptic_r50.get_config().dataset
    heights = np.array([100, 480, 640, 427, 1000] * 400)
    widths = np.array([1000, 640, 480, 640, 150] * 400)
    plan = transforms.plan_detr(heights, widths, np.random.default_rng(0), dataset)
    cropped = plan["first_size"] != np.stack([heights, widths], 1)
    for i in range(len(heights)):
        top, left, crop_h, crop_w = plan["crop"][i]
        if cropped[i].any():
            short = min(plan["first_size"][i]) if heights[i] != widths[i] else plan["first_size"][i][0]
            assert short in (400, 500, 600)
            assert tuple(plan["first_size"][i]) == detectron2_output_shape(heights[i], widths[i], short, float("inf"))
            for side, first in ((crop_h, plan["first_size"][i][0]), (crop_w, plan["first_size"][i][1])):
                assert min(first, 384) <= side <= min(first, 600)
            assert 0 <= top <= plan["first_size"][i][0] - crop_h and 0 <= left <= plan["first_size"][i][1] - crop_w
        else:
            assert (top, left, crop_h, crop_w) == (0, 0, heights[i], widths[i])
        final = plan["size"][i]
        short = min(final)
        assert final.max() <= 1333 and short <= 800
    assert plan["first_size"][0].tolist() in ([400, 4000], [500, 5000], [600, 6000]) or not cropped[0].any()
    assert 0.45 < plan["flip"].mean() < 0.55 and 0.45 < cropped.any(1).mean() < 0.55
    # No cap on the first resize: 100x1000 images reach a long side of 4000-6000 in the crop branch.
    assert plan["first_size"][::5][cropped[::5].any(1)][:, 1].min() >= 4000
    example = pattern(480, 640)
    row = {key: value[1] for key, value in plan.items()}
    assert transforms.detr_apply(example, row)["image"].shape[:2] == tuple(row["size"])


def test_panoptic_targets_follow_the_detr_panoptic_mapper():
    """Every non-crowd segment of the annotation, in its order, with mask `segments == id` and no
    area test: a segment the crop removed is an all-zero target."""
    example = pattern()
    example["iscrowd"] = np.zeros(12, bool)
    example["iscrowd"][5] = True
    cropped = transforms.crop(example, 0, 0, 30, 40)  # blocks 2, 3, 6, 7, 8-11 lose every pixel
    targets = make_targets(cropped, "panoptic", max_targets=15)
    expected_ids = [i for i in range(12) if not example["iscrowd"][i]]
    expected_masks = [cropped["segments"] == i for i in expected_ids]
    labels = targets["labels"]
    np.testing.assert_array_equal(labels[: len(expected_ids)], example["classes"][expected_ids])
    assert (labels[len(expected_ids):] == -1).all()
    for slot, mask in enumerate(expected_masks):
        np.testing.assert_array_equal(targets["segments"] == slot, mask)
    assert sum(not mask.any() for mask in expected_masks) >= 6


def test_images_are_read_with_their_exif_orientation(tmp_path):
    from PIL import Image

    from maskformer_jax.data.sources import image_shape, read_image

    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels are to be rotated 90° clockwise for display
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "rotated.png"), np.rot90(pixels, k=-1))
    assert image_shape(tmp_path / "rotated.png") == (30, 20)
