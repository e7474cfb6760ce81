"""COCO panoptic category table: size, thing/stuff split, id order and known entries."""

from maskformer_jax.data.classes import COCO_PANOPTIC_CATEGORIES as CATS


def test_counts():
    assert len(CATS) == 133
    assert sum(isthing for _, _, isthing, _ in CATS) == 80
    assert sum(not isthing for _, _, isthing, _ in CATS) == 53
    assert all(len(entry) == 4 for entry in CATS)
    assert all(isinstance(i, int) and isinstance(n, str) and isinstance(t, bool) for i, n, t, _ in CATS)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for _, _, _, c in CATS)


def test_ids_increasing_and_names_unique():
    ids = [i for i, _, _, _ in CATS]
    assert all(a < b for a, b in zip(ids, ids[1:]))
    assert len(set(ids)) == len(ids)
    assert len({n for _, n, _, _ in CATS}) == len(CATS)


def test_things_before_stuff():
    flags = [isthing for _, _, isthing, _ in CATS]
    assert flags == [True] * 80 + [False] * 53
    assert max(i for i, _, t, _ in CATS if t) < min(i for i, _, t, _ in CATS if not t)


def test_anchors():
    assert CATS[0] == (1, "person", True, (220, 20, 60))
    assert CATS[79][:3] == (90, "toothbrush", True)
    assert CATS[80][:3] == (92, "banner", False)
    assert CATS[-1] == (200, "rug-merged", False, (250, 141, 255))
    by_id = {i: (n, t) for i, n, t, _ in CATS}
    assert by_id[13] == ("stop sign", True)
    assert by_id[72] == ("tv", True)
    assert by_id[187] == ("sky-other-merged", False)
    assert 12 not in by_id and 91 not in by_id


def test_dataset_palettes():
    from configs import tiny
    from maskformer_jax.data.classes import ADE20K_COLORS
    from maskformer_jax.data.metadata import dataset_metadata

    config = tiny.get_config()
    assert len(ADE20K_COLORS) == 150 and len(set(ADE20K_COLORS)) == 149  # the benchmark palette repeats one colour
    for name, first, count in (("ade20k", (120, 120, 120), 150), ("coco_panoptic", (220, 20, 60), 133),
                               ("synthetic", (120, 170, 235), 7)):
        config.dataset.name = name
        colors = dataset_metadata(config.dataset).colors
        assert colors.shape == (count, 3) and colors.dtype == "uint8" and tuple(colors[0]) == first
    config.dataset.name = "tfds"
    assert dataset_metadata(config.dataset).colors is None
