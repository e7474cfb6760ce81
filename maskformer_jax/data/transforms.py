"""The reference's training and evaluation augmentations on raw examples, in numpy, PIL and OpenCV.

All randomness comes from the `np.random.Generator` passed in (grain derives it from the pipeline seed
and the example's position, so every epoch and every example is reproducible). Each transform takes
and returns an example dict with `image uint8 [H, W, 3]`, `segments int32 [H, W]` (-1 void) and
`valid bool [H, W]` (False on padding), plus whatever else it carries unchanged. SPEC.md §5.
"""

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

IMAGE_PAD_VALUE = 128  # the semantic mappers pad images with 128 (labels with ignore)


PADDING = ("", "absent", "counted")


def padding_absent(dataset) -> bool:
    """Whether training padding is absent (no loss, attention or position share; images 0 after
    normalisation) rather than counted as image: `dataset.padding`, by default absent for the DETR
    recipe, whose reference trains unpadded images, and counted for the semantic one, whose
    reference pads crops with 128 / ignore."""
    if dataset.padding not in PADDING:
        raise ValueError(f"config.dataset.padding must be 'absent', 'counted' or '' (by transform), got {dataset.padding!r}")
    return dataset.padding == "absent" or (dataset.padding == "" and dataset.transform == "detr")


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge size: short side to `short`, long side at most `max_size`,
    rounded with int(x + 0.5)."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image, height: int, width: int):
    """uint8 [h, w, 3] → [height, width, 3], bilinear with PIL, as detectron2's ResizeTransform."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize(example, height: int, width: int):
    """Image bilinear, segments and valid nearest."""
    if example["image"].shape[:2] == (height, width):
        return example
    out = dict(example, image=resize_image(example["image"], height, width))
    for key in ("segments", "valid"):
        dtype = example[key].dtype
        label = Image.fromarray(example[key].astype(np.int32), mode="I")
        out[key] = np.asarray(label.resize((width, height), Image.NEAREST)).astype(dtype)
    return out


def resize_shortest_edge(example, rng, short_sizes: Sequence[int], max_size: int):
    """Short side to a size chosen uniformly from `short_sizes`, long side capped at `max_size`."""
    short = int(rng.choice(short_sizes))
    return resize(example, *resized_shape(*example["image"].shape[:2], short, max_size))


def crop(example, top: int, left: int, height: int, width: int):
    out = dict(example)
    for key in ("image", "segments", "valid"):
        out[key] = example[key][top : top + height, left : left + width]
    return out


def random_crop(example, rng, size: Sequence[int], single_category_max_area: float = 1.0, classes=None):
    """A uniform random crop of `size` (H, W), shrunk to the image where it is smaller.

    With `single_category_max_area` < 1 (detectron2's RandomCrop_CategoryAreaConstraint), up to 10
    crops are drawn until no class covers more than that share of the crop's non-ignore pixels and at
    least two classes are present; `classes` [S] maps segments to classes for that count.
    """
    height, width = example["image"].shape[:2]
    crop_h, crop_w = min(size[0], height), min(size[1], width)

    def draw():
        return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))

    top, left = draw()
    if single_category_max_area < 1.0:
        for _ in range(10):
            window = example["segments"][top : top + crop_h, left : left + crop_w]
            labels = window[window >= 0]
            counts = np.bincount(classes[labels] if classes is not None else labels)
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < single_category_max_area:
                break
            top, left = draw()
    return crop(example, top, left, crop_h, crop_w)


def random_crop_absolute_range(example, rng, min_size: int, max_size: int):
    """detectron2's RandomCrop("absolute_range"): each side uniform in [min, max], capped by the image."""
    height, width = example["image"].shape[:2]
    crop_h = int(rng.integers(min(height, min_size), min(height, max_size) + 1))
    crop_w = int(rng.integers(min(width, min_size), min(width, max_size) + 1))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    return crop(example, top, left, crop_h, crop_w)


def horizontal_flip(example, rng, probability: float = 0.5):
    if rng.random() >= probability:
        return example
    out = dict(example)
    for key in ("image", "segments", "valid"):
        out[key] = np.ascontiguousarray(example[key][:, ::-1])
    return out


def _scale_shift(values, alpha=1.0, beta=0.0):
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_jitter_ssd(example, rng, brightness_delta=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta=18):
    """detectron2's ColorAugSSDTransform: brightness, then contrast before or after saturation and hue,
    each applied with probability 1/2; hue in OpenCV's 0..180 scale."""
    image = example["image"]

    def adjust_contrast(img):
        return _scale_shift(img, alpha=rng.uniform(*contrast)) if rng.random() < 0.5 else img

    def adjust_saturation(img):
        if rng.random() >= 0.5:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _scale_shift(hsv[..., 1], alpha=rng.uniform(*saturation))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def adjust_hue(img):
        if rng.random() >= 0.5:
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + rng.integers(-hue_delta, hue_delta + 1)) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    if rng.random() < 0.5:
        image = _scale_shift(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    if rng.random() < 0.5:
        image = adjust_hue(adjust_saturation(adjust_contrast(image)))
    else:
        image = adjust_contrast(adjust_hue(adjust_saturation(image)))
    return dict(example, image=image)


def pad(example, size: Sequence[int]):
    """Pad bottom/right to `size` (H, W): image 128, segments -1, valid False."""
    height, width = example["image"].shape[:2]
    if height > size[0] or width > size[1]:
        raise ValueError(f"image {example.get('image_id', '')} of size {height}x{width} exceeds the pad size {size}")
    padding = ((0, size[0] - height), (0, size[1] - width))
    return dict(
        example,
        image=np.pad(example["image"], padding + ((0, 0),), constant_values=IMAGE_PAD_VALUE),
        segments=np.pad(example["segments"], padding, constant_values=-1),
        valid=np.pad(example["valid"], padding, constant_values=False),
    )


def with_valid(example):
    """Add `valid` (all True) to a raw example."""
    return dict(example, valid=np.ones(example["image"].shape[:2], bool))


def semantic_train(example, rng, dataset):
    """The semantic mapper (ADE20K, COCO-Stuff, Cityscapes, ...): resize, crop, colour, flip, pad."""
    example = resize_shortest_edge(with_valid(example), rng, dataset.min_size_train, dataset.max_size_train)
    example = random_crop(example, rng, dataset.image_size, dataset.single_category_max_area, example["classes"])
    example = color_jitter_ssd(example, rng)
    example = horizontal_flip(example, rng)
    return pad(example, dataset.image_size)


def detr_train(example, rng, dataset):
    """COCO panoptic (DETR-style): flip, then resize, or (p = 1/2) resize + crop + resize; pad."""
    example = horizontal_flip(with_valid(example), rng)
    if rng.random() < 0.5:
        example = resize_shortest_edge(example, rng, dataset.crop_min_sizes, 1333)
        example = random_crop_absolute_range(example, rng, *dataset.crop_size_range)
    example = resize_shortest_edge(example, rng, dataset.min_size_train, dataset.max_size_train)
    return pad(example, dataset.image_size)


def evaluation(example, short_sizes: Sequence[int], max_size: int):
    """The reference's test mapper: the image resized once per short side in `short_sizes` (long
    side <= max_size) into `views`; the ground truth stays at the original size (height, width)."""
    height, width = example["image"].shape[:2]
    views = tuple(resize_image(example["image"], *resized_shape(height, width, short, max_size)) for short in short_sizes)
    return dict(example, views=views, height=height, width=width)


TRAIN_TRANSFORMS = {"semantic": semantic_train, "detr": detr_train}
