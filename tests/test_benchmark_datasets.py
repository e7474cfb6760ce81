"""The semantic benchmarks and ADE20K panoptic, each from a few files written here in its official
layout: the source reads them with the documented classes, data.check names every bad file, the
configs carry the official recipes, and a tiny model trains and evaluates on the Cityscapes layout
(a non-square crop) through train.py and eval.py."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import base, tiny
from maskformer_jax import cli
from maskformer_jax.data.check import check
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.data.pipeline import build_source

ROOT = pathlib.Path(__file__).resolve().parent.parent


def write_image(path, height=24, width=32, seed=0, suffix=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)).save(path)


def write_label(path, values, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype)).save(path)


def label_values(height=24, width=32, classes=(0, 1, 2), ignore=255):
    """Stripes of the given classes, the last row ignore."""
    values = np.asarray(classes)[(np.arange(width) * len(classes)) // width][None].repeat(height, 0)
    values[-1] = ignore
    return values


def write_pairs(root, image, label, stems, values, dtype=np.uint8):
    """An image and a label file per stem (paths `image` / `label` with {stem}); → the first pair's paths."""
    for i, stem in enumerate(stems):
        write_image(root / image.format(stem=stem), seed=i)
        write_label(root / label.format(stem=stem), values, dtype)
    return root / image.format(stem=stems[0]), root / label.format(stem=stems[0])


# dataset name → (write the layout of one split into root; (image path, label path) of its first example)
def write_coco_stuff(root, split):
    folder = {"train": "train", "validation": "test"}[split]
    return write_pairs(root, f"images_detectron2/{folder}/{{stem}}.jpg", f"annotations_detectron2/{folder}/{{stem}}.png",
                       ("COCO_train2014_000000000077", "COCO_train2014_000000000078"), label_values(classes=(0, 91, 170)))


def write_ade20k_full(root, split):
    folder = {"train": "training", "validation": "validation"}[split]
    return write_pairs(root, f"images_detectron2/{folder}/{{stem}}.jpg", f"annotations_detectron2/{folder}/{{stem}}.tif",
                       ("ADE_train_00000001", "ADE_train_00000002"), label_values(classes=(0, 500, 846), ignore=65535),
                       np.uint16)


def write_cityscapes(root, split):
    folder = {"train": "train", "validation": "val"}[split]
    for i, (city, frame) in enumerate((("aachen", "000000_000019"), ("bochum", "000001_000019"))):
        write_image(root / f"leftImg8bit/{folder}/{city}/{city}_{frame}_leftImg8bit.png", 32, 64, seed=i)
        write_label(root / f"gtFine/{folder}/{city}/{city}_{frame}_gtFine_labelTrainIds.png",
                    label_values(32, 64, classes=(0, 11, 18)))
        # the other files of gtFine are present in the release and must be left alone
        write_label(root / f"gtFine/{folder}/{city}/{city}_{frame}_gtFine_labelIds.png", np.full((32, 64), 7))
    return root / f"leftImg8bit/{folder}/aachen/aachen_000000_000019_leftImg8bit.png", \
        root / f"gtFine/{folder}/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"


def write_mapillary(root, split):
    folder = {"train": "training", "validation": "validation"}[split]
    return write_pairs(root, f"{folder}/images/{{stem}}.jpg", f"{folder}/labels/{{stem}}.png",
                       ("--2Z2T3B1bK2Q1qUh6Q3yA", "-0-6IWz6wNvVOHW1xkrQwA"), label_values(classes=(0, 30, 64), ignore=65))


WRITERS = {"coco_stuff_10k": (write_coco_stuff, 171, (0, 91, 170), ("person", "ceiling-tile", "wood")),
           "ade20k_full": (write_ade20k_full, 847, (0, 500, 846), ("wall", None, "adding machine, totalizer, totaliser")),
           "cityscapes": (write_cityscapes, 19, (0, 11, 18), ("road", "person", "bicycle")),
           "mapillary_vistas": (write_mapillary, 65, (0, 30, 64), ("Bird", None, "Ego Vehicle"))}


def dataset_config(name, root):
    config = tiny.get_config()
    config.dataset.name, config.dataset.root = name, str(root)
    config.model.num_classes = 0  # the dataset's count
    config.dataset.ignore_label = base.SEMANTIC_BENCHMARKS[name]["ignore_label"]
    config.eval.max_segments = max(256, WRITERS[name][1])  # a segment per class, as the configs set it
    return config


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_semantic_benchmark_sources_read_the_official_layout(tmp_path, name):
    write, count, classes, names = WRITERS[name]
    write(tmp_path, "train")
    write(tmp_path, "validation")
    config = dataset_config(name, tmp_path)
    cli.check_config(config, training=True)
    assert config.model.num_classes == count
    metadata = dataset_metadata(config.dataset)
    assert len(metadata.class_names) == count
    for k, expected in zip(classes, names):
        assert expected is None or metadata.class_names[k] == expected
    for split in ("train", "validation"):
        source = build_source(config.dataset, split)
        assert len(source) == 2
        example = source[0]
        height, width = example["image"].shape[:2]
        expected = label_values(height, width, classes, ignore=-1)
        np.testing.assert_array_equal(example["segments"], expected)
        # evaluation passes the source: its classes, things, ids and colours are the same
        from_source = dataset_metadata(config.dataset, source)
        assert from_source.class_names == metadata.class_names and from_source.category_ids == metadata.category_ids
        np.testing.assert_array_equal(from_source.is_thing, metadata.is_thing)
        assert (from_source.colors is None) == (metadata.colors is None)


def write_ade20k_panoptic(root, split):
    """Two images as prepare_ade20k_pan_seg.py writes them: wall (stuff) on the left, two beds (things,
    the second a crowd) on the right; returns the COCO-format JSON's path."""
    folder, short = root / "ADEChallengeData2016", {"train": "train", "validation": "val"}[split]
    images, annotations = [], []
    for i in range(2):
        stem = f"ADE_{short}_0000000{i + 1}"
        write_image(folder / f"images/{'training' if split == 'train' else 'validation'}/{stem}.jpg", seed=i)
        ids = np.zeros((24, 32), np.int64)
        ids[:, :16], ids[:12, 16:], ids[12:, 16:] = 1, 2, 3
        write_label(folder / f"ade20k_panoptic_{short}/{stem}.png",
                    np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8))
        images.append({"id": stem, "file_name": f"{stem}.jpg", "height": 24, "width": 32})
        annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": [
            {"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 7, "iscrowd": 0},
            {"id": 3, "category_id": 7, "iscrowd": 1}]})
    categories = [{"id": k, "name": f"c{k}", "isthing": int(k in base_things())} for k in range(150)]
    path = folder / f"ade20k_panoptic_{short}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def ade20k_panoptic_config(root):
    config = base.use_ade20k_panoptic(tiny.get_config())
    config.dataset.root, config.model.num_classes = str(root), 150
    return config


def test_ade20k_panoptic_source_reads_the_prepared_layout(tmp_path):
    write_ade20k_panoptic(tmp_path, "validation")
    config = ade20k_panoptic_config(tmp_path)
    source = build_source(config.dataset, "validation")
    example = source[0]
    assert list(example["classes"]) == [0, 7, 7] and list(example["iscrowd"]) == [False, False, True]
    assert example["segments"][0, 0] == 0 and example["segments"][0, 31] == 1 and example["segments"][23, 31] == 2
    metadata = dataset_metadata(config.dataset)
    assert metadata.is_thing.sum() == 100 and metadata.is_thing[7] and not metadata.is_thing[0]  # bed, wall


def base_things():
    from maskformer_jax.data.classes import ADE20K_PANOPTIC_THING_CLASSES

    return set(ADE20K_PANOPTIC_THING_CLASSES)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_bad_files_are_named_by_data_check(tmp_path, name, capsys):
    write, count, classes, _ = WRITERS[name]
    image, label = write(tmp_path, "train")
    second_label = sorted(p for p in tmp_path.rglob("*" + label.suffix) if p != label and "labelIds" not in p.name
                          and image.stem not in p.name and "images" not in str(p) and "leftImg8bit/" not in str(p))[0]
    config = dataset_config(name, tmp_path)
    cli.check_config(config, training=False)
    label.unlink()  # missing label
    dtype = np.uint16 if label.suffix == ".tif" else np.uint8
    write_label(second_label, np.full((5, 5), count - 1), dtype)  # wrong size
    assert check(config, "train") == 2
    report = capsys.readouterr().out
    assert f"{label.name}: unreadable label" in report and f"{second_label.name}: label size 5x5 differs" in report
    ignore = base.SEMANTIC_BENCHMARKS[name]["ignore_label"]
    height, width = (32, 64) if name == "cityscapes" else (24, 32)
    write_label(second_label, label_values(height, width, classes=(0, count + 1), ignore=ignore), dtype)  # out of range
    write_label(label, label_values(height, width, ignore=ignore), dtype)
    label.write_bytes(b"not an image")  # unreadable (a truncated TIFF or PNG)
    assert check(config, "train") == 2
    report = capsys.readouterr().out
    assert f"label values [{count + 1}] are outside the {count} classes" in report
    assert f"{label.name}: unreadable label" in report


@pytest.mark.parametrize("name, crop, classes, steps", [
    ("coco_stuff_r50", (640, 640), 171, 60_000), ("coco_stuff_r101", (640, 640), 171, 60_000),
    ("ade20k_full_r50", (512, 512), 847, 200_000), ("ade20k_full_r101c", (512, 512), 847, 200_000),
    ("cityscapes_r101", (512, 1024), 19, 90_000), ("cityscapes_r101c", (512, 1024), 19, 90_000),
    ("mapillary_r50", (1280, 1280), 65, 300_000), ("ade20k_panoptic_r50", (640, 640), 150, 720_000),
    ("ade20k_panoptic_r101", (640, 640), 150, 720_000),
])
def test_benchmark_configs_carry_the_official_recipes(name, crop, classes, steps):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.dataset.image_size, config.model.num_classes, config.num_steps) == (crop, classes, steps)
    short_side = {"coco": 640, "ade2": 512, "city": 1024, "mapi": 2048}.get(name[:4])
    if "panoptic" in name:
        assert config.dataset.target_mode == "panoptic" and config.model.encoder_layers == 6
        assert (config.inference.object_mask_threshold, config.inference.overlap_threshold) == (0.7, 0.8)
        assert config.dataset.min_size_train == tuple(int(x * 0.1 * 640) for x in range(5, 21))
    else:
        top = 16 if name.startswith("coco") else 21  # COCO-Stuff: 0.5-1.5x, the others 0.5-2.0x
        assert config.dataset.min_size_train == tuple(int(x * 0.1 * short_side) for x in range(5, top))
    if name.startswith("cityscapes"):
        assert (config.dataset.min_size_test, config.dataset.max_size_test, config.dataset.max_size_train) == (
            1024, 2048, 4096)
    if name.startswith("mapillary"):
        assert config.dataset.ignore_label == 65 and config.dataset.min_size_test == 2048
    if name.startswith("coco"):
        assert config.batch_size == 32 and config.eval.tta_sizes == (320, 480, 640, 800, 960, 1120)
    if name.startswith("ade20k_full"):
        assert config.dataset.ignore_label == 65535 and config.eval.max_segments == 847


def test_tiny_model_trains_and_evaluates_on_the_cityscapes_layout(tmp_path):
    """A non-square crop (32x64) through train.py with an evaluation at the end, then eval.py."""
    for split in ("train", "validation"):
        write_cityscapes(tmp_path / "cityscapes", split)
    flags = ["--config", "configs/tiny.py", "--config.dataset.name=cityscapes",
             f"--config.dataset.root={tmp_path / 'cityscapes'}", "--config.model.num_classes=19",
             "--config.dataset.image_size=(32, 64)", "--config.dataset.min_size_train=(32,)",
             "--config.dataset.min_size_test=32", "--config.num_steps=2", "--config.eval_every=2",
             "--config.log_every=1"]
    environment = dict(os.environ, JAX_PLATFORMS="cpu")
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", "--workdir", str(workdir), *flags], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "step 2 | eval: mIoU" in result.stdout
    result = subprocess.run([sys.executable, "eval.py", "--workdir", str(workdir), *flags], cwd=ROOT,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((workdir / "eval_validation.json").read_text())
    assert len(evaluation["IoU"]) == 19 and evaluation["class_names"][11] == "person"


@pytest.mark.parametrize("name", ["coco_stuff_10k", "ade20k_full", "mapillary_vistas", "ade20k_panoptic"])
def test_tiny_model_trains_and_evaluates_on_each_layout(tmp_path, name):
    """Two steps of train.py's training and eval.py's evaluation (in this process) on each fixture
    layout: 171 and 847 classes, 16-bit TIFF labels, ignore 65, and ADE20K panoptic scored by PQ."""
    import eval as eval_script
    import train as train_script

    root = tmp_path / name
    for split in ("train", "validation"):
        (write_ade20k_panoptic if name == "ade20k_panoptic" else WRITERS[name][0])(root, split)
    config = ade20k_panoptic_config(root) if name == "ade20k_panoptic" else dataset_config(name, root)
    config.num_steps, config.eval_every, config.log_every = 2, 0, 1
    trained = train_script.train_and_evaluate(config, tmp_path / "run")
    assert trained["step"] == 2 and np.isfinite(trained["loss"])
    eval_script.evaluate_checkpoint(config, tmp_path / "run")
    evaluation = json.loads((tmp_path / "run/eval_validation.json").read_text())
    count, classes, names = (150, (0, 7), ("c0", "c7")) if name == "ade20k_panoptic" else WRITERS[name][1:]  # the JSON's names
    assert len(evaluation["IoU"]) == count and np.isfinite(evaluation["mIoU"])
    for k, expected in zip(classes, names):
        assert expected is None or evaluation["class_names"][k] == expected
    if name == "ade20k_panoptic":  # scored by PQ over the fixture's wall and beds
        assert evaluation["task"] == "panoptic" and np.isfinite(evaluation["PQ"]) and evaluation["n"] == 2


@pytest.mark.parametrize("name", ["coco_stuff_r50", "coco_stuff_r101", "ade20k_full_r50", "ade20k_full_r101c",
                                  "cityscapes_r101", "cityscapes_r101c", "mapillary_r50", "ade20k_panoptic_r50",
                                  "ade20k_panoptic_r101"])
def test_full_size_train_step_shapes(name):
    """The whole train step (forward, matching, loss, gradients, update) of each config at its full crop,
    by shape only (jax.eval_shape): non-square Cityscapes crops and 847 classes included."""
    import importlib

    import jax

    from benchmarks.compare import synthetic_batch
    from maskformer_jax.models import build_model
    from maskformer_jax.training.optimizer import build_optimizer
    from maskformer_jax.devices import make_mesh
    from maskformer_jax.training.state import create_train_state, state_sharding
    from maskformer_jax.training.step import jit_train_step

    config = importlib.import_module(f"configs.{name}").get_config()
    config.batch_size = 2
    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh(jax.devices()[:1])
    abstract = jax.eval_shape(lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0)))
    example = synthetic_batch(2, tuple(config.dataset.image_size), config.loss.max_targets, config.model.num_classes)
    batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in example.items()}
    step = jit_train_step(config, model, optimizer, mesh, state_sharding(abstract, mesh, False))
    with jax.set_mesh(mesh):
        state, metrics = jax.eval_shape(step, abstract, batch)
    assert metrics["loss"].shape == () and state.params["class_embed"]["kernel"].shape == (256, config.model.num_classes + 1)
