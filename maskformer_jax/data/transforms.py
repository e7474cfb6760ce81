"""The reference's training and evaluation augmentations on raw examples, in numpy, PIL and OpenCV.

All randomness comes from the `np.random.Generator` passed in (grain derives it from the pipeline seed
and the example's position; the DETR recipe's from (seed, epoch) in `plan_detr`), so every epoch and
every example is reproducible. Each transform takes and returns an example dict with `image uint8
[H, W, 3]` and `segments int32 [H, W]` (-1 void), plus whatever else it carries unchanged; `pad`
adds `valid bool [H, W]` (False on padding), which the others carry along if it is there. docs/reference.md §5.
"""

from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from maskformer_jax.errors import ConfigError
from maskformer_jax.resize import legacy_nearest_index

IMAGE_PAD_VALUE = 128  # the semantic mappers pad images with 128 (labels with ignore)


PADDING = ("", "absent", "counted")


def padding_absent(dataset) -> bool:
    """Whether training padding is absent (no loss, attention or position share; images 0 after
    normalisation) rather than counted as image: `dataset.padding`, by default absent for the DETR
    recipe, whose reference trains unpadded images, and counted for the semantic one, whose
    reference pads crops with 128 / ignore."""
    if dataset.padding not in PADDING:
        raise ConfigError(f"config.dataset.padding must be 'absent', 'counted' or '' (by transform), "
                         f"got {dataset.padding!r}")
    return dataset.padding == "absent" or (dataset.padding == "" and dataset.transform == "detr")


def resized_shape(height, width, short, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape: the short side becomes `short`, then both
    sides are rescaled if the long one exceeds `max_size`, rounded with int(x + 0.5). Scalars give
    (int, int); arrays (the training plans) give two int arrays."""
    h, w, short = (np.asarray(v, np.float64) for v in (height, width, short))
    scale = short / np.minimum(h, w)
    new_h, new_w = np.where(h < w, short, scale * h), np.where(h < w, scale * w, short)
    longest = np.maximum(new_h, new_w)
    factor = np.where(longest > max_size, max_size / longest, 1.0)
    new_h, new_w = np.floor(new_h * factor + 0.5).astype(np.int64), np.floor(new_w * factor + 0.5).astype(np.int64)
    return (int(new_h), int(new_w)) if new_h.ndim == 0 else (new_h, new_w)


def resize_image(image, height: int, width: int):
    """uint8 [h, w, 3] → [height, width, 3], bilinear with PIL, as detectron2's ResizeTransform."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize(example, height: int, width: int, label_rule: str = "pil"):
    """Image bilinear (PIL); segments and valid nearest, by the rule the reference's labels get:
    "pil" (PIL's NEAREST: the panoptic mapper's uint8 RGB PNG) or "torch" (F.interpolate's legacy
    nearest, source index floor(dst·in/out): the semantic mapper's labels, cast to float first)."""
    if example["image"].shape[:2] == (height, width):
        return example
    out = dict(example, image=resize_image(example["image"], height, width))
    for key in ("segments", "valid") if "valid" in example else ("segments",):
        if label_rule == "torch":
            rows = legacy_nearest_index(example[key].shape[0], height)
            out[key] = example[key][rows][:, legacy_nearest_index(example[key].shape[1], width)]
            continue
        label = Image.fromarray(example[key].astype(np.int32), mode="I")
        out[key] = np.asarray(label.resize((width, height), Image.NEAREST)).astype(example[key].dtype)
    return out


def resize_shortest_edge(example, rng, short_sizes: Sequence[int], max_size: float, label_rule: str = "pil"):
    """Short side to a size chosen uniformly from `short_sizes`, long side capped at `max_size`."""
    short = int(rng.choice(short_sizes))
    return resize(example, *resized_shape(*example["image"].shape[:2], short, max_size), label_rule)


def crop(example, top: int, left: int, height: int, width: int):
    out = dict(example)
    for key in ("image", "segments", "valid") if "valid" in example else ("image", "segments"):
        out[key] = example[key][top : top + height, left : left + width]
    return out


def random_crop(example, rng, size: Sequence[int], single_category_max_area: float = 1.0, classes=None):
    """A uniform random crop of `size` (H, W), shrunk to the image where it is smaller.

    With `single_category_max_area` < 1 (detectron2's RandomCrop_CategoryAreaConstraint), up to 10
    crops are drawn until no class covers `single_category_max_area` or more of the crop's
    non-ignore pixels and at least two classes are present; the 10th is kept if none passes.
    `classes` [S] maps segments to classes for that count.
    """
    height, width = example["image"].shape[:2]
    crop_h, crop_w = min(size[0], height), min(size[1], width)
    for _ in range(10 if single_category_max_area < 1.0 else 1):
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        if single_category_max_area >= 1.0:
            break
        window = example["segments"][top : top + crop_h, left : left + crop_w]
        labels = window[window >= 0]
        counts = np.bincount(classes[labels] if classes is not None else labels)
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return crop(example, top, left, crop_h, crop_w)


def horizontal_flip(example, rng, probability: float = 0.5):
    if probability < 1.0 and rng.random() >= probability:
        return example
    out = dict(example)
    for key in ("image", "segments", "valid") if "valid" in example else ("image", "segments"):
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
    """Pad bottom/right to `size` (H, W): image 128, segments -1, valid False (True on the image,
    or the example's own `valid` if it has one). (Where padding is absent the train step sets
    padded pixels to 0 after normalisation instead.)"""
    height, width = example["image"].shape[:2]
    if height > size[0] or width > size[1]:
        raise ValueError(f"image {example.get('image_id', '')} of size {height}x{width} exceeds the pad size {size}")
    padding = ((0, size[0] - height), (0, size[1] - width))
    return dict(
        example,
        image=np.pad(example["image"], padding + ((0, 0),), constant_values=IMAGE_PAD_VALUE),
        segments=np.pad(example["segments"], padding, constant_values=-1),
        valid=np.pad(example.get("valid", np.ones((height, width), bool)), padding, constant_values=False),
    )


def semantic_train(example, rng, dataset):
    """The semantic mapper (ADE20K, COCO-Stuff, Cityscapes, ...): resize, crop, colour, flip, pad."""
    example = resize_shortest_edge(example, rng, dataset.min_size_train, dataset.max_size_train, "torch")
    example = random_crop(example, rng, dataset.image_size, dataset.single_category_max_area, example["classes"])
    example = color_jitter_ssd(example, rng)
    example = horizontal_flip(example, rng)
    return pad(example, dataset.image_size)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= value."""
    return -(-value // multiple) * multiple


def training_canvases(dataset) -> list[tuple[int, int]]:
    """The padded (H, W) sizes training batches take. Semantic: the crop size. DETR: a landscape and
    a portrait canvas that hold any resize (short side <= max(min_size_train), long side <=
    max_size_train), rounded up to 32; a batch is one orientation (`orientation`)."""
    if dataset.transform != "detr":
        return [tuple(dataset.image_size)]
    short, long = round_up(max(dataset.min_size_train), 32), round_up(int(dataset.max_size_train), 32)
    return [(short, long), (long, short)]


def orientation(height, width):
    """detectron2's aspect-ratio groups: 0 for landscape (width > height), 1 otherwise."""
    return np.where(np.asarray(width) > np.asarray(height), 0, 1)


def plan_detr(heights, widths, rng, dataset) -> dict:
    """Every random choice of the DETR mapper for N images of the given sizes, drawn at once, and
    the sizes they lead to: flip; with p = 1/2 the crop branch (short side to one of crop_min_sizes
    with no long-side cap, then an absolute_range crop); then the short side to one of
    min_size_train, long side <= max_size_train. Arrays [N]; `detr_apply` carries one row out."""
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    count = len(heights)
    flip, crop_branch = rng.random(count) < 0.5, rng.random(count) < 0.5
    first_h, first_w = resized_shape(heights, widths, rng.choice(dataset.crop_min_sizes, count), np.inf)
    low, high = dataset.crop_size_range
    crop_h = rng.integers(np.minimum(first_h, low), np.minimum(first_h, high) + 1)
    crop_w = rng.integers(np.minimum(first_w, low), np.minimum(first_w, high) + 1)
    top, left = rng.integers(0, first_h - crop_h + 1), rng.integers(0, first_w - crop_w + 1)
    first_h, first_w = np.where(crop_branch, first_h, heights), np.where(crop_branch, first_w, widths)
    crop_h, crop_w = np.where(crop_branch, crop_h, heights), np.where(crop_branch, crop_w, widths)
    top, left = np.where(crop_branch, top, 0), np.where(crop_branch, left, 0)
    out_h, out_w = resized_shape(crop_h, crop_w, rng.choice(dataset.min_size_train, count), dataset.max_size_train)
    return {"flip": flip, "first_size": np.stack([first_h, first_w], 1),
            "crop": np.stack([top, left, crop_h, crop_w], 1), "size": np.stack([out_h, out_w], 1)}


def detr_apply(example, plan: dict):
    """One row of `plan_detr` applied to a raw example (its size must be the planned one)."""
    if plan["flip"]:
        example = horizontal_flip(example, None, probability=1.0)
    example = resize(example, *plan["first_size"])
    example = crop(example, *plan["crop"])
    return resize(example, *plan["size"])


def detr_train(example, rng, dataset):
    """COCO panoptic (DETR-style), one example: `plan_detr` for its size, applied, padded to the
    canvas of its orientation."""
    height, width = example["image"].shape[:2]
    plan = {key: value[0] for key, value in plan_detr([height], [width], rng, dataset).items()}
    example = detr_apply(example, plan)
    return pad(example, training_canvases(dataset)[int(orientation(*plan["size"]))])


def evaluation(example, short_sizes: Sequence[int], max_size: int, test_size: Sequence[int] | None = None):
    """The reference's test mapper: the image resized once per short side in `short_sizes` (long
    side <= max_size) into `views`; the ground truth stays at the original size (height, width).

    With `test_size` (min_size_test, max_size_test: test-time augmentation), the image is first
    resized by the test mapper and each view is resized from that, as detectron2's DatasetMapperTTA
    receives the test mapper's output.
    """
    height, width = example["image"].shape[:2]
    image = example["image"]
    if test_size is not None:
        image = resize_image(image, *resized_shape(height, width, *test_size))
    views = tuple(resize_image(image, *resized_shape(*image.shape[:2], short, max_size)) for short in short_sizes)
    return dict(example, views=views, height=height, width=width)


TRAIN_TRANSFORMS = {"semantic": semantic_train, "detr": detr_train}
