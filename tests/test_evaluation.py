"""Evaluation end to end on the tiny config: eval.py, predict.py, shards, test-time augmentation."""

import collections
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import tiny
from maskformer_jax import metrics
from maskformer_jax.data import transforms
from maskformer_jax.data.synthetic import SyntheticSource
from maskformer_jax.evaluation import Evaluator
from maskformer_jax.predictor import window_offsets
from maskformer_jax.models import build_model

NUM_EXAMPLES = 6


def eval_config(**changes):
    config = tiny.get_config()
    config.inference.task = "panoptic"
    config.inference.object_mask_threshold = 0.0  # a random model is never confident
    config.eval.batch_size = 4  # 6 examples: a full batch and a padded one
    config.eval.num_examples = NUM_EXAMPLES
    config.dataset.synthetic_eval_examples = NUM_EXAMPLES
    for key, value in changes.items():
        config[key.split(".")[0]][key.split(".")[1]] = value
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A workdir with a step-0 checkpoint of the tiny model (random weights)."""
    workdir = tmp_path_factory.mktemp("run")
    config = eval_config()
    model = build_model(config.model)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    variables = {"params": variables["params"], "frozen": variables.get("frozen", {})}
    ocp.PyTreeCheckpointer().save(workdir / "checkpoints" / "0" / "state", variables)  # the weights of a train state
    return workdir, variables


def rgb_to_id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def test_eval_script_writes_metrics_and_predictions_that_reproduce_them(checkpoint, capsys):
    import eval as eval_script

    workdir, _ = checkpoint
    config = eval_config(**{"eval.save_predictions": True})
    result = eval_script.evaluate_checkpoint(config, workdir)
    printed = capsys.readouterr().out
    assert "PQ" in printed and "eval 6/6 images" in printed and "triangle" in printed
    saved = json.loads((workdir / "eval_validation.json").read_text())
    assert saved["mIoU"] == pytest.approx(result["mIoU"]) and saved["PQ"] == pytest.approx(result["PQ"])
    assert len(saved["IoU"]) == 7 and saved["class_names"][4] == "disc"

    # The saved predictions, read back as a user would, give the reported numbers again.
    source = SyntheticSource(NUM_EXAMPLES, config.dataset.synthetic_size, seed=1)
    annotations = json.loads((workdir / "predictions_validation/panoptic.json").read_text())
    by_image = {a["image_id"]: a for a in annotations["annotations"]}
    assert len(by_image) == NUM_EXAMPLES and len(annotations["categories"]) == 7
    confusion = np.zeros((7, 7), np.int64)
    statistics = np.zeros((7, 4))
    for example in (source[i] for i in range(NUM_EXAMPLES)):
        name = example["image_id"]
        semantic = np.asarray(Image.open(workdir / f"predictions_validation/semantic/{name}.png"))
        assert semantic.shape == example["segments"].shape  # the original size
        gt = np.where(example["segments"] >= 0, example["classes"][np.maximum(example["segments"], 0)], -1)
        confusion += np.asarray(metrics.confusion_matrix(semantic, gt, 7))
        ids = rgb_to_id(np.asarray(Image.open(workdir / f"predictions_validation/panoptic/{name}.png")))
        info = by_image[name]["segments_info"]
        assert sorted(np.unique(ids[ids > 0]).tolist()) == [s["id"] for s in info]
        position = {s["id"]: i for i, s in enumerate(info)}
        pred = np.vectorize(lambda i: position.get(i, -1))(ids)
        table = metrics.panoptic_contingency(example["segments"][None], pred[None], np.ones((1, *ids.shape), bool),
                                             len(example["classes"]), len(info))[0]
        statistics += metrics.panoptic_statistics(table, example["classes"], example["iscrowd"],
                                                  np.array([s["category_id"] for s in info]), 7)
    assert metrics.semantic_metrics(confusion)["mIoU"] == pytest.approx(result["mIoU"])
    assert metrics.panoptic_metrics(statistics, [k >= 4 for k in range(7)])["PQ"] == pytest.approx(result["PQ"])
    assert result["n"] > 0


def test_two_shards_add_up_to_the_whole(checkpoint):
    _, variables = checkpoint
    config = eval_config()
    model = build_model(config.model)

    class Part:
        class_names, thing_classes = SyntheticSource.class_names, SyntheticSource.thing_classes

        def __init__(self, indices):
            self.indices, self.whole = indices, SyntheticSource(NUM_EXAMPLES, config.dataset.synthetic_size, seed=1)

        def __len__(self):
            return len(self.indices)

        def __getitem__(self, i):
            return self.whole[self.indices[i]]

    sums = [Evaluator(config, model, Part(indices)).accumulate(variables, log=lambda _: None)
            for indices in ([0, 1, 2, 3, 4, 5], [0, 2, 4], [1, 3, 5])]
    np.testing.assert_array_equal(sums[1][0] + sums[2][0], sums[0][0])
    np.testing.assert_allclose(sums[1][1] + sums[2][1], sums[0][1])
    assert sums[0][0].sum() > 0 and sums[0][1][:, :3].sum() > 0


def test_flip_augmentation_makes_scores_mirror_symmetric(checkpoint):
    """Averaging an image's scores with those of its mirror image (flipped back) gives the mirror
    image of what its mirror image gets; without the flip it does not."""
    _, variables = checkpoint
    model = build_model(tiny.get_config().model)
    example = SyntheticSource(1, (80, 96), seed=1)[0]
    mirrored = dict(example, image=example["image"][:, ::-1].copy())

    def scores(example, flip):
        config = tiny.get_config()
        config.eval.update(tta=True, tta_sizes=(64,), tta_max_size=256, tta_flip=flip)
        evaluator = Evaluator(config, model, SyntheticSource(1, (80, 96), seed=1))
        views = transforms.evaluation(example, config.eval.tta_sizes, config.eval.tta_max_size)
        predictor = evaluator.predictor
        with jax.set_mesh(predictor.mesh):
            out = predictor.augmented_scores(predictor.variables_here(variables), views, (128, 128))
        return np.asarray(out)[0, :, :80, :96]

    np.testing.assert_allclose(scores(example, True), scores(mirrored, True)[:, :, ::-1], atol=1e-5)
    assert not np.allclose(scores(example, False), scores(mirrored, False)[:, :, ::-1], atol=1e-3)


def test_sliding_window_averages_the_windows(checkpoint):
    _, variables = checkpoint
    config = tiny.get_config()  # 64 x 64 windows
    config.eval.update(sliding_window=True, window_stride=(32, 32))
    model = build_model(config.model)
    evaluator = Evaluator(config, model, SyntheticSource(1, (96, 96), seed=1))
    images = np.random.default_rng(0).integers(0, 255, size=(1, 96, 96, 3), dtype=np.uint8)
    sizes = np.array([[96, 96]])
    scores = np.asarray(jax.jit(evaluator.predictor._sliding_window)(variables, images, sizes))
    assert window_offsets(96, 64, 32) == [0, 32]
    from maskformer_jax.postprocessing import semantic_scores
    from maskformer_jax.models import normalize

    total, count = np.zeros((7, 96, 96)), np.zeros((96, 96))
    apply = jax.jit(model.apply)
    for y in (0, 32):
        for x in (0, 32):
            out = apply(variables, normalize(images[:, y:y + 64, x:x + 64]))
            total[:, y:y + 64, x:x + 64] += np.asarray(semantic_scores(out["class_logits"][-1], out["mask_logits"][-1], 64, 64))[0]
            count[y:y + 64, x:x + 64] += 1
    np.testing.assert_allclose(scores[0], total / count, atol=1e-5)


def test_predict_writes_pictures_in_the_predicted_colours(checkpoint, tmp_path, monkeypatch):
    import predict

    from maskformer_jax import visualize

    monkeypatch.setattr(visualize, "MIN_PICTURE_SIDE", 1)  # drawn at the image size, pixel for pixel
    workdir, variables = checkpoint
    config = tiny.get_config()
    images = [np.random.default_rng(0).integers(0, 255, size=(72, 100, 3), dtype=np.uint8),
              SyntheticSource(1, (96, 96), seed=3)[0]["image"]]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image{i}.png")
    written = predict.predict_files(config, workdir, [folder], tmp_path / "out")
    assert [p.name for p in written] == ["image0.png", "image1.png"]
    # Inputs that share a stem get distinct pictures.
    shared = [pathlib.Path("a.jpg"), pathlib.Path("a.png"), pathlib.Path("x/b.png"), pathlib.Path("y/b.png")]
    assert predict.picture_names(shared) == ["a_jpg.png", "a_png.png", "b_png_2.png", "b_png_3.png"]
    model = build_model(config.model)
    from maskformer_jax.predictor import Predictor
    from maskformer_jax.data.metadata import dataset_metadata

    predictor = Predictor(config, model, dataset_metadata(config.dataset))
    palette = dataset_metadata(config.dataset).colors  # the synthetic scenes' own colours
    for image, path in zip(images, written):
        picture = np.asarray(Image.open(path))
        height, width = image.shape[:2]
        assert picture.shape[0] >= height and picture.shape[1] > width  # the image, then the legend
        classes = predictor.predict(predictor.variables_here(variables), image)["semantic_map"]
        inner = np.ones_like(classes, bool)  # pixels whose 4 neighbours have the same class (no outline)
        inner[1:] &= classes[1:] == classes[:-1]; inner[:-1] &= classes[:-1] == classes[1:]
        inner[:, 1:] &= classes[:, 1:] == classes[:, :-1]; inner[:, :-1] &= classes[:, :-1] == classes[:, 1:]
        expected = np.round(0.4 * image + 0.6 * palette[classes]).astype(np.uint8)
        np.testing.assert_allclose(picture[:height, :width][inner], expected[inner], atol=1)


def test_instance_prediction_at_the_image_size(checkpoint):
    _, variables = checkpoint
    from maskformer_jax.data.metadata import dataset_metadata
    from maskformer_jax.predictor import Predictor

    config = tiny.get_config()
    config.inference.update(task="instance", top_k=5)
    predictor = Predictor(config, build_model(config.model), dataset_metadata(config.dataset))
    result = predictor.predict(predictor.variables_here(variables), np.zeros((70, 90, 3), np.uint8))
    instances = result["instances"]
    assert result["semantic_map"].shape == (70, 90) and instances["masks"].shape == (5, 70, 90)
    # the synthetic set's things are classes 4-6: only those are kept
    np.testing.assert_array_equal(instances["kept"], np.isin(instances["classes"], [4, 5, 6]))
    assert ((instances["scores"] >= 0) & (instances["scores"] <= 1)).all()  # probability x mean mask probability


def test_instance_evaluation_scores_the_written_coco_results(checkpoint, capsys, tmp_path):
    """eval.py with task=instance: COCO mask AP printed and saved; the results JSON, scored by
    pycocotools against the ground truth derived from the panoptic annotations (or read from an
    instances JSON), gives the same numbers."""
    import eval as eval_script
    from maskformer_jax import coco_eval
    from maskformer_jax.data.metadata import dataset_metadata

    workdir, _ = checkpoint
    config = eval_config(**{"inference.task": "instance", "eval.save_predictions": True})
    result = eval_script.evaluate_checkpoint(config, workdir)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "APl" in printed and "triangle" in printed
    saved = json.loads((workdir / "eval_validation.json").read_text())
    assert saved["AP"] == pytest.approx(result["AP"]) and len(saved["AP_per_class"]) == 7
    assert np.isnan(result["AP_per_class"][:4]).all() and np.isfinite(result["AP_per_class"][4:]).all()  # stuff, things

    results = json.loads((workdir / "predictions_validation/instances_results.json").read_text())
    images = collections.Counter(r["image_id"] for r in results)
    assert len(images) == NUM_EXAMPLES and max(images.values()) <= config.inference.top_k
    assert {r["category_id"] for r in results} <= {4, 5, 6} and all(0 <= r["score"] <= 1 for r in results)
    source, metadata = SyntheticSource(NUM_EXAMPLES, config.dataset.synthetic_size, seed=1), dataset_metadata(config.dataset)
    examples = [source[i] for i in range(NUM_EXAMPLES)]
    annotations = [a for e in examples for a in coco_eval.panoptic_ground_truth(
        e["image_id"], e["segments"], e["classes"], e["iscrowd"], metadata.is_thing, metadata.category_ids)]
    ground_truth = coco_eval.ground_truth([{"id": e["image_id"], "height": 96, "width": 96} for e in examples],
                                          annotations, [c for c in metadata.categories() if c["isthing"]])
    again = coco_eval.coco_metrics(ground_truth, results, [e["image_id"] for e in examples], metadata.category_ids)
    np.testing.assert_allclose([again[key] for key in coco_eval.SUMMARY_KEYS], [result[key] for key in coco_eval.SUMMARY_KEYS])

    # the ground truth's own thing masks as predictions, on a canvas larger than the image, score 100
    evaluator = Evaluator(config, build_model(config.model))
    records = {"images": [], "results": [], "annotations": []}
    for example in examples:
        things = [s for s, c in enumerate(example["classes"]) if metadata.is_thing[c]]
        masks = np.zeros((1, len(things) + 1, 128, 128), bool)
        masks[0, :-1, :96, :96] = example["segments"][None] == np.asarray(things)[:, None, None]
        instances = {"masks": masks, "scores": np.ones((1, len(things) + 1)), "kept": np.arange(len(things) + 1)[None] < len(things),
                     "classes": np.asarray([[*example["classes"][things], 0]])}
        for key, values in evaluator.instance_records(dict(example, height=96, width=96), instances, 0).items():
            records[key] += values
    assert evaluator.instance_metrics(records)["AP"] == pytest.approx(100.0)

    (tmp_path / "instances.json").write_text(json.dumps(ground_truth.dataset))
    config = eval_config(**{"inference.task": "instance"})
    config.dataset.root, config.dataset.instances_json = str(tmp_path), "instances.json"
    from_json = eval_script.evaluate_checkpoint(config, workdir)
    np.testing.assert_allclose(from_json["AP_per_class"], result["AP_per_class"])
