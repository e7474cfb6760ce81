"""Pictures of segmentations: the image blended with one colour per segment, white outlines where
segments meet, and a legend of the classes present to the right. Images smaller than
MIN_PICTURE_SIDE are enlarged by a whole factor (nearest) so that they are legible next to it.

A semantic map is drawn as segment_map = class map, segment_classes = arange(K).
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Class k's hue and lightness are two low-discrepancy sequences (steps 1/golden ratio and 1/plastic number), so
# consecutive classes differ strongly and 150 classes still spread evenly over the saturated colours.
HUE_STEP, LIGHTNESS_STEP = 0.6180339887498949, 0.7548776662466927
SHADE_STEP, MAX_SHADE = 0.08, 0.85  # instance n of a thing class: blend towards white/black by ceil(n/2) steps

WHITE, TEXT_COLOUR = (255, 255, 255), (0, 0, 0)
LEGEND_MARGIN, SWATCH_SIZE, SWATCH_TEXT_GAP, LEGEND_ROW_HEIGHT = 6, 14, 6, 20  # pixels
MIN_LEGEND_WIDTH = 64  # the legend of an empty map
MIN_PICTURE_SIDE = 384  # smaller images are drawn enlarged 2x, 3x, ... until their long side reaches this


def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3]: saturated, never white or black; class k's colour does not depend on num_classes."""
    colours = []
    for k in range(num_classes):
        lightness = (0.5 + k * LIGHTNESS_STEP) % 1.0
        # saturation >= 0.65 and value >= 0.6 keep every colour away from white, black and grey
        colours.append(colorsys.hsv_to_rgb((k * HUE_STEP) % 1.0, 1.0 - 0.35 * lightness, 0.6 + 0.4 * lightness))
    return np.round(np.asarray(colours, np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def segment_colors(segment_classes, thing_classes, palette) -> np.ndarray:
    """uint8 [S, 3] from segment_classes int [S] and palette uint8 [K, 3].

    Stuff segments get their class colour. The n-th segment of a thing class gets the class colour
    for n = 0, then alternately lighter (odd n) and darker (even n) by growing steps.
    """
    segment_classes = np.asarray(segment_classes, np.int64).reshape(-1)
    palette = np.asarray(palette, np.uint8)
    bad = (segment_classes < 0) | (segment_classes >= len(palette))
    if bad.any():
        raise ValueError(f"segment classes {np.unique(segment_classes[bad])[:10].tolist()} are outside the "
                         f"{len(palette)} classes")
    things = {int(k) for k in np.asarray(thing_classes, np.int64).reshape(-1)}
    colours = palette[segment_classes].astype(np.float64)
    instances_seen = {}
    for segment, k in enumerate(segment_classes.tolist()):
        if k not in things:
            continue
        n = instances_seen[k] = instances_seen.get(k, -1) + 1
        amount = min(SHADE_STEP * ((n + 1) // 2), MAX_SHADE)
        target = 255.0 if n % 2 == 1 else 0.0
        colours[segment] += amount * (target - colours[segment])
    return np.round(colours).astype(np.uint8)


def outline_mask(segment_map: np.ndarray) -> np.ndarray:
    """bool [H, W]: labelled pixels with a 4-neighbour of a different segment index (image borders excluded)."""
    differs = np.zeros(segment_map.shape, bool)
    vertical = segment_map[1:] != segment_map[:-1]
    horizontal = segment_map[:, 1:] != segment_map[:, :-1]
    differs[1:] |= vertical
    differs[:-1] |= vertical
    differs[:, 1:] |= horizontal
    differs[:, :-1] |= horizontal
    return differs & (segment_map >= 0)


def draw_legend(class_ids, class_names, class_colours, height: int) -> np.ndarray:
    """uint8 [max(height, rows), width, 3]: white panel, one row per class: a swatch of its colour and its name."""
    font = ImageFont.load_default()
    text_width = max((font.getbbox(class_names[k])[2] for k in class_ids), default=0)
    width = max(MIN_LEGEND_WIDTH, 2 * LEGEND_MARGIN + SWATCH_SIZE + SWATCH_TEXT_GAP + text_width)
    rows_height = 2 * LEGEND_MARGIN + LEGEND_ROW_HEIGHT * len(class_ids)
    panel = Image.new("RGB", (width, max(height, rows_height)), WHITE)
    draw = ImageDraw.Draw(panel)
    for row, k in enumerate(class_ids):
        top = LEGEND_MARGIN + row * LEGEND_ROW_HEIGHT
        swatch_top = top + (LEGEND_ROW_HEIGHT - SWATCH_SIZE) // 2
        draw.rectangle([LEGEND_MARGIN, swatch_top, LEGEND_MARGIN + SWATCH_SIZE - 1, swatch_top + SWATCH_SIZE - 1],
                       fill=tuple(int(c) for c in class_colours[k]))
        _, text_top, _, text_bottom = font.getbbox(class_names[k])
        text_y = top + (LEGEND_ROW_HEIGHT - (text_bottom - text_top)) // 2 - text_top  # centred in the row
        draw.text((LEGEND_MARGIN + SWATCH_SIZE + SWATCH_TEXT_GAP, text_y), class_names[k], fill=TEXT_COLOUR, font=font)
    return np.asarray(panel)


def draw_segmentation(image, segment_map, segment_classes, class_names, thing_classes=(), alpha=0.6,
                      class_colours=None) -> np.ndarray:
    """uint8 [max(s H, legend height), s W + legend width, 3], s = the enlargement (1 from MIN_PICTURE_SIDE up).

    image: uint8 [H, W, 3]; segment_map: int [H, W] index into segment_classes, -1 unlabelled (left as the
    image); segment_classes: int [S]; class_names: K names; thing_classes: classes whose segments get shades;
    class_colours: uint8 [K, 3], a dataset's own palette (default: `palette(K)`).
    out[:sH, :sW] = round((1 - alpha) * image + alpha * colour), outlines white; the legend lists the classes
    present in class order; canvas rows below the image are white.
    """
    image, segment_map = np.asarray(image), np.asarray(segment_map)
    segment_classes = np.asarray(segment_classes, np.int64).reshape(-1)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if segment_map.shape != image.shape[:2]:
        raise ValueError(f"segment_map shape {segment_map.shape} differs from image shape {image.shape[:2]}")
    if segment_map.size and (segment_map.min() < -1 or segment_map.max() >= len(segment_classes)):
        bad = np.unique(segment_map[(segment_map < -1) | (segment_map >= len(segment_classes))])[:10].tolist()
        raise ValueError(f"segment indices {bad} in segment_map are outside the {len(segment_classes)} segment "
                         f"classes (-1 = unlabelled)")
    class_colours = palette(len(class_names)) if class_colours is None else np.asarray(class_colours, np.uint8)
    scale = -(-MIN_PICTURE_SIDE // max(max(segment_map.shape), 1))
    if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
        segment_map = segment_map.repeat(scale, 0).repeat(scale, 1)
    colours = segment_colors(segment_classes, thing_classes, class_colours)  # checks classes < len(class_names)
    labelled = segment_map >= 0
    height, width = segment_map.shape
    view = image.copy()
    blend = (1 - alpha) * image[labelled] + alpha * colours[segment_map[labelled]].astype(np.float64)
    view[labelled] = np.round(blend).astype(np.uint8)
    view[outline_mask(segment_map)] = WHITE
    present = np.unique(segment_classes[segment_map[labelled]]).tolist()
    legend = draw_legend(present, class_names, class_colours, height)
    canvas = np.full((legend.shape[0], width + legend.shape[1], 3), 255, np.uint8)
    canvas[:height, :width] = view
    canvas[:, width:] = legend
    return canvas
