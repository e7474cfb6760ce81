"""The exact on-device solver against scipy, and the matching cost against Hugging Face's."""

import jax
import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from transformers.models.maskformer.modeling_maskformer import pair_wise_dice_loss, pair_wise_sigmoid_focal_loss

from maskformer_jax.matching import match, matching_cost

NUM_QUERIES = 16


def total_cost(cost, assignment):
    """Σ cost[q, assignment[q]] over assigned queries, in float64."""
    queries = np.flatnonzero(assignment >= 0)
    return float(np.sum(cost[queries, assignment[queries]].astype(np.float64)))


def scipy_total(cost, valid):
    columns = np.flatnonzero(valid)
    if columns.size == 0:
        return 0.0
    rows, chosen = scipy.optimize.linear_sum_assignment(cost[:, columns].astype(np.float64))
    return float(np.sum(cost[:, columns][rows, chosen].astype(np.float64)))


def random_problems(rng, num, num_targets, integer):
    shape = (num, NUM_QUERIES, num_targets)
    cost = rng.integers(0, 3, shape) if integer else rng.normal(size=shape)  # 3 values: many ties
    valid = rng.random((num, num_targets)) < 0.75
    valid[: num // 4] = True  # some without padding, T = Q included
    return cost.astype(np.float32), valid


@pytest.mark.parametrize("num_targets", [0, 1, NUM_QUERIES // 2, NUM_QUERIES])
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer_ties"])
def test_jax_solver_total_cost_equals_scipy(num_targets, integer):
    """8 settings x 128 matrices = 1,024 problems."""
    rng = np.random.default_rng(num_targets + 100 * integer)
    cost, valid = random_problems(rng, 128, num_targets, integer)
    assignment = np.asarray(jax.jit(match, static_argnames="solver")(cost, valid, solver="jax"))
    assert assignment.shape == (128, NUM_QUERIES)
    for b in range(128):
        assigned = assignment[b][assignment[b] >= 0]
        # Every valid target exactly once, never a padded slot.
        np.testing.assert_array_equal(np.sort(assigned), np.flatnonzero(valid[b]))
        expected = scipy_total(cost[b], valid[b])
        assert total_cost(cost[b], assignment[b]) == pytest.approx(expected, rel=1e-6, abs=1e-5)


def test_solvers_agree_on_decoder_layers_and_realistic_sizes():
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(6, 4, 100, 50)).astype(np.float32)
    valid = np.arange(50)[None] < rng.integers(0, 51, size=(4, 1))
    jax_assignment = np.asarray(match(cost, valid, "jax"))
    scipy_assignment = np.asarray(match(cost, valid, "scipy"))
    for layer in range(6):
        for b in range(4):
            ours, theirs = jax_assignment[layer, b], scipy_assignment[layer, b]
            assert (ours >= 0).sum() == (theirs >= 0).sum() == valid[b].sum()
            assert total_cost(cost[layer, b], ours) == pytest.approx(total_cost(cost[layer, b], theirs), rel=1e-6)


@pytest.mark.parametrize("solver", ["jax", "scipy"])
def test_non_finite_costs_still_give_a_full_assignment(solver):
    cost = np.random.default_rng(1).normal(size=(2, 6, 4)).astype(np.float32)
    cost[0, 2] = np.nan
    cost[1, :, 1] = np.inf
    assignment = np.asarray(match(cost, np.ones((2, 4), bool), solver))
    for b in range(2):
        np.testing.assert_array_equal(np.sort(assignment[b][assignment[b] >= 0]), np.arange(4))
    assert assignment[0, 2] == -1  # the NaN query loses to every finite one


def test_more_targets_than_queries_is_rejected():
    with pytest.raises(ValueError, match=r"max_targets \(7\) exceeds config.model.num_queries \(6\)"):
        match(np.zeros((1, 6, 7), np.float32), np.ones((1, 7), bool))
    with pytest.raises(ValueError, match="config.loss.matcher must be one of .*, got 'greedy'"):
        match(np.zeros((1, 6, 2), np.float32), np.ones((1, 2), bool), "greedy")


def test_matching_cost_equals_hf_pairwise_costs():
    """Class, focal and dice costs of Hugging Face's matcher, targets downsampled with legacy nearest."""
    rng = np.random.default_rng(2)
    num_queries, num_classes, height, width = 7, 5, 32, 48
    class_logits = rng.normal(size=(2, 1, num_queries, num_classes + 1)).astype(np.float32)
    mask_logits = rng.normal(size=(2, 1, num_queries, height // 4, width // 4)).astype(np.float32) * 3
    segments = rng.integers(-1, 4, size=(1, height, width)).astype(np.int32)
    labels = np.array([[2, 0, 4, 2, -1]], np.int32)
    cost = np.asarray(matching_cost(class_logits, mask_logits, segments, labels, {"class": 1, "focal": 20, "dice": 1}))

    targets = torch.from_numpy(np.stack([segments[0] == t for t in range(4)]).astype(np.float32))
    targets = F.interpolate(targets[:, None], size=(height // 4, width // 4), mode="nearest")[:, 0].flatten(1)
    for layer in range(2):
        logits = torch.from_numpy(mask_logits[layer, 0]).flatten(1)
        probs = torch.from_numpy(class_logits[layer, 0]).softmax(-1)
        expected = (-probs[:, torch.tensor([2, 0, 4, 2])] + 20 * pair_wise_sigmoid_focal_loss(logits, targets)
                    + pair_wise_dice_loss(logits, targets))
        np.testing.assert_allclose(cost[layer, 0, :, :4], expected.numpy(), rtol=1e-5, atol=1e-5)
