"""COCO panoptic category table: size, thing/stuff split, id order and known entries."""

from maskformer_jax.data.metadata import COCO_PANOPTIC_CATEGORIES as CATS


def test_counts():
    assert len(CATS) == 133
    assert sum(isthing for _, _, isthing in CATS) == 80
    assert sum(not isthing for _, _, isthing in CATS) == 53
    assert all(len(entry) == 3 for entry in CATS)
    assert all(isinstance(i, int) and isinstance(n, str) and isinstance(t, bool) for i, n, t in CATS)


def test_ids_increasing_and_names_unique():
    ids = [i for i, _, _ in CATS]
    assert all(a < b for a, b in zip(ids, ids[1:]))
    assert len(set(ids)) == len(ids)
    assert len({n for _, n, _ in CATS}) == len(CATS)


def test_things_before_stuff():
    flags = [isthing for _, _, isthing in CATS]
    assert flags == [True] * 80 + [False] * 53
    assert max(i for i, _, t in CATS if t) < min(i for i, _, t in CATS if not t)


def test_anchors():
    assert CATS[0] == (1, "person", True)
    assert CATS[79] == (90, "toothbrush", True)
    assert CATS[80] == (92, "banner", False)
    assert CATS[-1] == (200, "rug-merged", False)
    by_id = {i: (n, t) for i, n, t in CATS}
    assert by_id[13] == ("stop sign", True)
    assert by_id[72] == ("tv", True)
    assert by_id[187] == ("sky-other-merged", False)
    assert 12 not in by_id and 91 not in by_id
