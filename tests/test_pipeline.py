"""grain pipelines: determinism, disjoint process shards, exact resume, eval visits each example once."""

import numpy as np
import pytest

from configs import tiny
from maskformer_jax.data.pipeline import AspectGroupedOrder, eval_pipeline, train_pipeline
from maskformer_jax.data.synthetic import SyntheticSource
from maskformer_jax.errors import DataError

SOURCE = SyntheticSource(24, (96, 96), seed=9)


def config(batch_size=4):
    c = tiny.get_config()
    c.batch_size = batch_size
    c.dataset.read_threads = 2
    return c


def take(dataset_or_iterator, count):
    iterator = iter(dataset_or_iterator)
    return [next(iterator) for _ in range(count)]


def test_batches_follow_the_contract_and_the_seed():
    first = take(train_pipeline(config(), SOURCE, 0, 1), 3)
    again = take(train_pipeline(config(), SOURCE, 0, 1), 3)
    batch = first[0]
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["valid"].dtype == bool and batch["segments"].dtype == np.int32
    assert batch["labels"].shape == (4, 10) and batch["labels"].dtype == np.int32
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = config()
    other.seed = 1
    assert not np.array_equal(take(train_pipeline(other, SOURCE, 0, 1), 1)[0]["image"], batch["image"])


def test_process_shards_are_disjoint_and_cover_each_epoch():
    ids = []
    for process in range(2):
        batches = take(train_pipeline(config(batch_size=4), SOURCE, process, 2), 6)  # 2 per batch
        ids.append([i for batch in batches for i in batch["image_id"]])
    # One epoch = 24 examples = 12 per process; the first 12 of each process are disjoint and cover it.
    assert set(ids[0][:12]).isdisjoint(ids[1][:12])
    assert set(ids[0][:12]) | set(ids[1][:12]) == {f"synthetic_9_{i}" for i in range(24)}
    # The same example gets the same augmentation whatever the number of processes.
    single = take(train_pipeline(config(batch_size=4), SOURCE, 0, 1), 3)
    images = {i: image for batch in single for i, image in zip(batch["image_id"], batch["image"])}
    first = take(train_pipeline(config(batch_size=4), SOURCE, 1, 2), 1)[0]
    for image_id, image in zip(first["image_id"], first["image"]):
        np.testing.assert_array_equal(image, images[image_id])


@pytest.mark.parametrize("recipe", ["semantic", "detr"])
def test_restoring_the_iterator_state_resumes_at_the_next_batch(recipe):
    # Both cross an epoch boundary: 6 batches per epoch (24 examples), 4 for DETR (10 examples).
    make, source = (config, SOURCE) if recipe == "semantic" else (detr_config, SyntheticSource(10, (96, 96), seed=4))
    iterator = iter(train_pipeline(make(), source, 0, 1))
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(4)]
    resumed = iter(train_pipeline(make(), source, 0, 1))
    resumed.set_state(state)
    for batch in expected:
        got = next(resumed)
        for key in batch:
            np.testing.assert_array_equal(got[key], batch[key])


def test_worker_processes_give_the_same_batches_and_resume():
    from absl import flags

    flags.FLAGS(["test"])  # grain workers read absl flags
    threaded = take(train_pipeline(config(), SOURCE, 0, 1), 3)
    workers = config()
    workers.dataset.num_workers = 1
    iterator = iter(train_pipeline(workers, SOURCE, 0, 1))
    try:
        got = [next(iterator) for _ in range(2)]
        state = iterator.get_state()
        for a, b in zip(threaded, got):
            np.testing.assert_array_equal(a["image"], b["image"])
    finally:
        iterator.close()
    resumed = iter(train_pipeline(workers, SOURCE, 0, 1))
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)["image"], threaded[2]["image"])
    finally:
        resumed.close()


def test_images_without_labels_are_trained_as_the_reference_does():
    """detectron2 filters only datasets with instance "annotations"; all-ignore images train (no targets)."""
    class WithEmpty:
        def __len__(self):
            return 8

        def __getitem__(self, index):
            example = SOURCE[index]
            if index % 2:
                example = dict(example, segments=np.full_like(example["segments"], -1))
            return example

    batches = take(train_pipeline(config(), WithEmpty(), 0, 1), 2)
    empty = [(labels < 0).all() for batch in batches for labels in batch["labels"]]
    ids = [int(i.rsplit("_", 1)[1]) for batch in batches for i in batch["image_id"]]
    assert empty == [i % 2 == 1 for i in ids] and any(empty)


def detr_config(batch_size=4):
    c = config(batch_size)
    c.dataset.update(transform="detr", target_mode="panoptic", min_size_train=(48, 64), max_size_train=96,
                     crop_min_sizes=(48, 64), crop_size_range=(32, 56))
    return c


def test_detr_batches_are_one_orientation_on_every_process_and_cover_each_epoch():
    source = SyntheticSource(26, (96, 96), seed=3)
    order = AspectGroupedOrder(source.image_shapes(), 4, 0, detr_config().dataset)
    single = take(train_pipeline(detr_config(), source, 0, 1), 2 * order.batches_per_epoch)
    shapes = {batch["image"].shape[1:3] for batch in single}
    assert shapes == {(64, 96), (96, 64)}  # both canvases occur, and nothing else
    for batch in single:  # each image lies in its batch's canvas, in the canvas's orientation
        height, width = batch["valid"].any(2).sum(1), batch["valid"].any(1).sum(1)
        assert ((width > height) == (batch["image"].shape[2] > batch["image"].shape[1])).all()
    epoch = [i for batch in single[: order.batches_per_epoch] for i in batch["image_id"]]
    assert set(epoch) == {f"synthetic_3_{i}" for i in range(26)} and len(epoch) == 4 * 8
    # Two processes: at every step both hold halves of the single-process global batch.
    halves = [take(train_pipeline(detr_config(), source, p, 2), 6) for p in range(2)]
    for step, batch in enumerate(single[:6]):
        assert halves[0][step]["image"].shape == halves[1][step]["image"].shape == (2, *batch["image"].shape[1:])
        merged = sorted(list(halves[0][step]["image_id"]) + list(halves[1][step]["image_id"]))
        assert merged == sorted(batch["image_id"])
        np.testing.assert_array_equal(halves[0][step]["image"][0], batch["image"][0])
    other = detr_config()
    other.seed = 1
    assert [b["image_id"].tolist() for b in take(train_pipeline(other, source, 0, 1), 3)] != \
        [b["image_id"].tolist() for b in single[:3]]


def test_detr_pipeline_in_worker_processes_gives_the_same_batches():
    from absl import flags

    flags.FLAGS(["test"])  # grain workers read absl flags
    source = SyntheticSource(10, (96, 96), seed=4)
    threaded = take(train_pipeline(detr_config(), source, 0, 1), 4)
    workers = detr_config()
    workers.dataset.num_workers = 2  # two workers: each must deliver whole batches
    iterator = iter(train_pipeline(workers, source, 0, 1))
    try:
        for batch in threaded:
            np.testing.assert_array_equal(next(iterator)["image"], batch["image"])
    finally:
        iterator.close()


def test_detr_pipeline_names_an_image_whose_listed_size_is_wrong():
    class Misreported(SyntheticSource):
        def image_shapes(self):
            return [(80, 96)] * len(self)

    with pytest.raises(DataError, match="synthetic_0_.* is 96x96 but listed as 80x96"):
        take(train_pipeline(detr_config(), Misreported(8, (96, 96)), 0, 1), 1)


def test_eval_visits_every_example_once_at_its_original_size():
    c = config()
    source = SyntheticSource(13, (96, 80), seed=2)
    examples = list(eval_pipeline(c, source, process_index=0, process_count=1))
    assert sorted(e["image_id"] for e in examples) == sorted(f"synthetic_2_{i}" for i in range(13))
    first = examples[0]
    assert (first["height"], first["width"]) == (96, 80) and first["segments"].shape == (96, 80)
    assert [v.shape for v in first["views"]] == [(77, 64, 3)]  # short side min_size_test = 64
    shards = [[e["image_id"] for e in eval_pipeline(c, source, p, 2)] for p in range(2)]
    assert set(shards[0]).isdisjoint(shards[1]) and len(shards[0]) + len(shards[1]) == 13
    c.eval.update(tta=True, tta_sizes=(32, 64), num_examples=5)
    examples = list(eval_pipeline(c, source, 0, 1))
    # Views are resized from the test mapper's 77x64 image (DatasetMapperTTA): 77 * 32 / 64 = 38.5 → 39,
    # where resizing the 96x80 original would give 38.
    assert len(examples) == 5 and [v.shape[:2] for v in examples[0]["views"]] == [(39, 32), (77, 64)]
    c.eval.max_segments = 2
    with pytest.raises(ValueError, match="synthetic_2_0 has .* segments, more than config.eval.max_segments = 2"):
        list(eval_pipeline(c, source, 0, 1))


def test_batch_size_must_divide_over_processes():
    with pytest.raises(ValueError, match="batch_size 5 is not divisible by 2 processes"):
        train_pipeline(config(batch_size=5), SOURCE, 0, 2)
