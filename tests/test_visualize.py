"""Segmentation pictures: palette, instance shades, the blended view, outlines, legend and errors."""

import subprocess
import sys

import numpy as np
import pytest

from maskformer_jax import visualize
from maskformer_jax.data.classes import ADE20K_CLASS_NAMES

NAMES = ["sky", "grass", "wall", "water", "disc", "box", "a rather long class name"]


@pytest.fixture(autouse=True)
def drawn_at_their_size(monkeypatch):
    """The small test images are drawn without enlargement, except where a test says otherwise."""
    monkeypatch.setattr(visualize, "MIN_PICTURE_SIDE", 1)


def is_grey(colours):
    return colours.max(-1) == colours.min(-1)


def semantic_example():
    """An image [12, 16, 3] and a class map with classes 0, 2, 3 (1 absent), left and right halves split at x=8."""
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    classes = np.zeros((12, 16), np.int32)
    classes[:, 8:] = 2
    classes[6:, 8:] = 3
    return image, classes


def test_palette_is_deterministic_across_calls_processes_and_sizes():
    colours = visualize.palette(150)
    assert colours.dtype == np.uint8 and colours.shape == (150, 3)
    np.testing.assert_array_equal(colours, visualize.palette(150))
    np.testing.assert_array_equal(colours[:7], visualize.palette(7))
    code = "from maskformer_jax import visualize; print(visualize.palette(150).tobytes().hex())"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == colours.tobytes().hex()


def test_palette_colours_are_distinct_saturated_and_never_white_or_black():
    colours = visualize.palette(256).astype(int)
    assert len({tuple(c) for c in colours}) == 256
    assert not ((colours == 255).all(-1) | (colours == 0).all(-1)).any()
    assert (colours.max(-1) - colours.min(-1) >= 100).all()  # saturated: far from grey
    neighbours = np.abs(colours[1:] - colours[:-1]).sum(-1)
    assert neighbours.min() >= 100  # consecutive classes look different


def test_thing_instances_get_distinct_shades_and_stuff_shares_its_class_colour():
    colours = visualize.palette(7)
    segment_classes = [4] * 20 + [0, 0, 5, 4]
    shades = visualize.segment_colors(segment_classes, [4, 5], colours)
    assert shades.dtype == np.uint8 and shades.shape == (24, 3)
    disc_shades = np.concatenate([shades[:20], shades[23:]])
    assert len({tuple(c) for c in disc_shades}) == 21
    np.testing.assert_array_equal(shades[0], colours[4])  # instance 0 is the class colour
    np.testing.assert_array_equal(shades[22], colours[5])  # counted per class
    np.testing.assert_array_equal(shades[20:22], colours[[0, 0]])  # stuff
    brightness = shades[:5].astype(int).sum(-1)
    assert brightness[1] > brightness[0] > brightness[2]  # lighter, then darker
    assert brightness[3] > brightness[1] and brightness[4] < brightness[2]  # by growing steps
    np.testing.assert_array_equal(visualize.segment_colors([4, 4], [], colours), colours[[4, 4]])


def test_output_size_is_image_plus_legend_to_the_right():
    image, classes = (np.repeat(array, 8, axis=0) for array in semantic_example())  # [96, 16]
    picture = visualize.draw_segmentation(image, classes, np.arange(7), NAMES)
    assert picture.dtype == np.uint8 and picture.shape[0] == 96 and picture.shape[1] > 16
    long_name = np.where(classes == 3, 6, classes)  # classes 0, 2, 6
    wider = visualize.draw_segmentation(image, long_name, np.arange(7), NAMES)
    assert wider.shape[0] == 96 and wider.shape[1] > picture.shape[1]  # a longer name widens the legend
    fewer = visualize.draw_segmentation(image, np.where(long_name == 0, 2, long_name), np.arange(7), NAMES)
    assert fewer.shape == wider.shape  # the width follows the longest name present, not the row count


def test_tall_legend_extends_the_canvas_below_the_image_in_white():
    image = np.zeros((4, 10, 3), np.uint8)
    classes = np.tile(np.arange(10), (4, 1))
    picture = visualize.draw_segmentation(image, classes, np.arange(150), ADE20K_CLASS_NAMES)
    assert picture.shape[0] > 4 * 10 and picture.shape[1] > 10
    assert (picture[4:, :10] == 255).all()


def test_blend_away_from_outlines_and_white_outlines_where_segments_meet():
    image, classes = semantic_example()
    picture = visualize.draw_segmentation(image, classes, np.arange(7), NAMES, alpha=0.6)
    view = picture[:12, :16]
    outline = np.zeros((12, 16), bool)
    outline[:, 7:9] = True  # the vertical border, on both sides
    outline[5:7, 8:] = True  # the horizontal border between classes 2 and 3, on the right only
    expected = np.round(0.4 * image + 0.6 * visualize.palette(7)[classes]).astype(np.uint8)
    np.testing.assert_array_equal(view[~outline], expected[~outline])
    assert (view[outline] == 255).all()


def test_legend_swatches_show_the_present_classes_in_class_order():
    image, classes = semantic_example()
    picture = visualize.draw_segmentation(image, classes, np.arange(7), NAMES)
    legend = picture[:, 16:].reshape(-1, 3)
    coloured = legend[~is_grey(legend)]  # swatches; background is white and text is grey
    first_rows = [tuple(c) for c in dict.fromkeys(map(tuple, coloured))]
    assert first_rows == [tuple(c) for c in visualize.palette(7)[[0, 2, 3]]]


def test_instances_are_shaded_and_unlabelled_pixels_keep_the_image():
    image = np.full((6, 9, 3), 100, np.uint8)
    segment_map = np.full((6, 9), -1, np.int32)
    segment_map[:, :3], segment_map[:, 6:] = 0, 1  # two discs; the middle is unlabelled
    picture = visualize.draw_segmentation(image, segment_map, [4, 4], NAMES, thing_classes=[4], alpha=0.5)
    shades = visualize.segment_colors([4, 4], [4], visualize.palette(7))
    np.testing.assert_array_equal(picture[:6, 3:6], image[:, 3:6])
    np.testing.assert_array_equal(picture[0, 0], np.round(50 + 0.5 * shades[0].astype(float)).astype(np.uint8))
    np.testing.assert_array_equal(picture[0, 8], np.round(50 + 0.5 * shades[1].astype(float)).astype(np.uint8))
    assert (picture[:6, [2, 6]] == 255).all()  # labelled pixels next to unlabelled ones are outlined


def test_empty_map_has_an_empty_legend_of_minimum_width():
    image, _ = semantic_example()
    picture = visualize.draw_segmentation(image, np.full((12, 16), -1), np.arange(7), NAMES)
    np.testing.assert_array_equal(picture[:, :16], image)
    assert picture.shape == (12, 16 + visualize.MIN_LEGEND_WIDTH, 3)
    assert (picture[:, 16:] == 255).all()


@pytest.mark.parametrize("segment_map, segment_classes, match", [
    (np.zeros((12, 15), int), [0], "segment_map shape"),
    (np.full((12, 16), 2), [0, 1], "segment indices \\[2\\]"),
    (np.zeros((12, 16), int), [7], "segment classes \\[7\\] are outside the 7 classes"),
])
def test_inconsistent_inputs_raise_value_errors_naming_the_problem(segment_map, segment_classes, match):
    image, _ = semantic_example()
    with pytest.raises(ValueError, match=match):
        visualize.draw_segmentation(image, segment_map, segment_classes, NAMES)


def test_ade20k_class_names_are_the_150_scene_parsing_classes():
    assert len(ADE20K_CLASS_NAMES) == 150 and len(set(ADE20K_CLASS_NAMES)) == 150
    assert ADE20K_CLASS_NAMES[0] == "wall" and ADE20K_CLASS_NAMES[2] == "sky"
    assert ADE20K_CLASS_NAMES[12] == "person" and ADE20K_CLASS_NAMES[149] == "flag"
    assert all(name == name.strip() and "," not in name for name in ADE20K_CLASS_NAMES)


def test_small_images_are_enlarged_by_a_whole_factor_and_drawn_in_the_given_colours(monkeypatch):
    monkeypatch.setattr(visualize, "MIN_PICTURE_SIDE", 40)
    image, classes = semantic_example()  # 12 x 16: enlarged 3x to 36 x 48 (long side >= 40)
    colours = np.array([[10, 200, 10], [0, 0, 0], [200, 10, 10], [10, 10, 200], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
                       np.uint8)
    picture = visualize.draw_segmentation(image, classes, np.arange(7), NAMES, alpha=1.0, class_colours=colours)
    assert picture.shape[1] > 48 and picture.shape[0] >= 36
    np.testing.assert_array_equal(picture[:3, :3], np.broadcast_to(colours[0], (3, 3, 3)))  # one pixel, 3x3
    np.testing.assert_array_equal(picture[35, 47], colours[3])
    assert (picture[:36, 23] == 255).all() and (picture[:36, 25] != 255).any()  # one-pixel outline at the boundary


def test_predict_pictures_leave_out_unlikely_and_tiny_instances():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    import predict
    from maskformer_jax.data.metadata import make_metadata

    metadata = make_metadata(NAMES, thing_classes=[4, 5])
    masks = np.zeros((4, 100, 100), bool)
    masks[0, :50, :50] = True  # big, likely: drawn
    masks[1, 60:, 60:] = True  # big, unlikely: left out
    masks[2, 90:94, 0:4] = True  # 16 pixels (0.16%), likely: left out
    masks[3, 0:30, 60:90] = True  # likely but not kept by inference: left out
    instances = {"masks": masks, "classes": np.array([4, 5, 4, 5]), "scores": np.array([0.9, 0.3, 0.95, 0.9]),
                 "kept": np.array([True, True, True, False])}
    image = np.zeros((100, 100, 3), np.uint8)
    picture = predict.picture(image, {"instances": instances}, metadata, "instance")
    only_first = visualize.draw_segmentation(image, np.where(masks[0], 0, -1), [4], NAMES, [4])
    np.testing.assert_array_equal(picture, only_first)
