"""Matching costs [.., B, Q, T] and exact assignment solvers, as pure functions.

Solvers share one signature, `(cost [..., B, Q, T], valid [B, T]) -> assignment [..., B, Q]` (target
index per query, -1 for unmatched): every valid target gets exactly one query, padded targets none.
- "jax": an exact shortest-augmenting-path solver (the algorithm of scipy's linear_sum_assignment)
  that runs on device, vmapped over matrices, and loops only over the valid targets.
- "scipy": scipy's linear_sum_assignment on the host through one `jax.pure_callback` per device;
  on GPUs and TPUs too, where each step sends the costs to the host and back (tests/test_tpu.py
  compiles it for a TPU slice).
Under a mesh with a "data" axis, `match` runs the solver in `jax.shard_map`, so each device solves its
own shard of the batch (a bare callback would run once, on one device, for the global batch).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jax.sharding import PartitionSpec

from maskformer_jax.errors import ConfigError
from maskformer_jax.resize import downsample_valid, resize_nearest_legacy

# Non-finite costs (a diverged model) become this: large enough to lose against any real pair,
# moderate enough to keep float32 dual updates exact.
NON_FINITE_COST = 1e4


def _pixel_count(logits, valid):
    """The pixels a cost averages over: P, or the valid ones of each image [B, 1, 1]."""
    return logits.shape[-1] if valid is None else jnp.maximum(valid.sum(-1, keepdims=True), 1.0)


def _masked(x, valid):
    return x if valid is None else x * valid


def pairwise_focal_cost(logits, targets, valid=None, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss of every (query, target) pair, averaged over pixels (each image's `valid`
    ones if given, float [B, 1, P]; targets are 0 outside them).

    logits: [B, Q, P] float32; targets: [B, T, P] in {0, 1} → [B, Q, T].
    """
    prob = jax.nn.sigmoid(logits)
    positive = alpha * (1 - prob) ** gamma * jax.nn.softplus(-logits)
    negative = (1 - alpha) * prob**gamma * jax.nn.softplus(logits)
    cost = jnp.einsum("bqp,btp->bqt", positive - negative, targets) + _masked(negative, valid).sum(-1)[..., None]
    return cost / _pixel_count(logits, valid)


def pairwise_dice_cost(logits, targets, valid=None):
    """1 - (2 Σ p·t + 1) / (Σ p + Σ t + 1) for every pair, over the `valid` pixels if given.
    logits [B, Q, P], targets [B, T, P] → [B, Q, T]."""
    prob = _masked(jax.nn.sigmoid(logits), valid)
    numerator = 2 * jnp.einsum("bqp,btp->bqt", prob, targets)
    denominator = prob.sum(-1)[..., None] + targets.sum(-1)[:, None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_bce_cost(logits, targets, valid=None):
    """Sigmoid cross-entropy of every pair, averaged over pixels (the `valid` ones if given).
    logits [B, Q, P], targets [B, T, P] → [B, Q, T]."""
    cost = jnp.einsum("bqp,btp->bqt", jax.nn.softplus(-logits) - jax.nn.softplus(logits), targets)
    return (cost + _masked(jax.nn.softplus(logits), valid).sum(-1)[..., None]) / _pixel_count(logits, valid)


PAIRWISE_MASK_COSTS = {"focal": pairwise_focal_cost, "dice": pairwise_dice_cost, "bce": pairwise_bce_cost}


def matching_cost(class_logits, mask_logits, segments, labels, weights, valid=None):
    """The matching cost of every (query, target) pair, for every decoder layer.

    class_logits: [L, B, Q, K+1]; mask_logits: [L, B, Q, h, w]; segments: [B, H, W] int32 target index
    per pixel (-1 for none); labels: [B, T] int32 (-1 for padding); weights: {"class": w, <mask cost
    name>: w, ...}; valid: bool [B, H, W] to cost each image's own pixels only, or None. Targets (and
    `valid`) are downsampled to the mask resolution with PyTorch's legacy nearest rule.
    Returns [L, B, Q, T] float32 (padded targets get arbitrary values), without gradient.
    """
    class_logits, mask_logits = jax.lax.stop_gradient((class_logits, mask_logits))
    batch, num_queries, height, width = mask_logits.shape[1:]
    num_targets = labels.shape[-1]
    segments = resize_nearest_legacy(segments[..., None], height, width)[..., 0]
    targets = segments.reshape(batch, 1, height * width) == jnp.arange(num_targets)[:, None]
    targets = targets.astype(jnp.float32)
    if valid is not None:
        valid = downsample_valid(valid, height, width).reshape(batch, 1, height * width).astype(jnp.float32)
    index = jnp.broadcast_to(jnp.maximum(labels, 0)[:, None, :], (batch, num_queries, num_targets))

    def layer_cost(layer):
        class_logits, mask_logits = layer
        probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
        cost = -weights["class"] * jnp.take_along_axis(probs, index, axis=-1)
        logits = mask_logits.astype(jnp.float32).reshape(batch, num_queries, height * width)
        for name, weight in weights.items():
            if name != "class":
                cost = cost + weight * PAIRWISE_MASK_COSTS[name](logits, targets, valid)
        return cost

    # One layer at a time: only one layer's [B, Q, h·w] elementwise terms are alive, and each
    # product is a plain batched matmul (XLA's CPU backend ran the stacked version 2x slower).
    return jax.lax.map(layer_cost, (class_logits, mask_logits))


class _Search(NamedTuple):
    """One Dijkstra search from a new target row over the queries."""
    row: jax.Array  # int32: the row whose reduced costs are scanned next
    lowest: jax.Array  # float: the shortest path length found last
    sink: jax.Array  # int32: the free query the search ended at, -1 while searching
    shortest: jax.Array  # [Q] shortest path length to each query
    path: jax.Array  # int32 [Q] the row each query is reached from
    seen_rows: jax.Array  # bool [T]
    seen_cols: jax.Array  # bool [Q]


class _Assignment(NamedTuple):
    """The solver's state between rows."""
    rows_added: jax.Array  # int32
    u: jax.Array  # [T] row potentials
    v: jax.Array  # [Q] column potentials
    query_of: jax.Array  # int32 [T] (-1: none)
    target_of: jax.Array  # int32 [Q] (-1: none)


class _Flip(NamedTuple):
    """Walking the augmenting path back from the sink."""
    query: jax.Array  # int32
    query_of: jax.Array
    target_of: jax.Array
    done: jax.Array  # bool


def _assign_one(cost, valid):
    """Exact min-cost assignment of the valid targets of one matrix. cost [Q, T], valid [T] → [Q] int32.

    Shortest augmenting paths with dual potentials (Crouse 2016, as scipy's linear_sum_assignment):
    targets are rows and are added one at a time, each by a Dijkstra search over the queries for the
    cheapest path to a free query. All loop state is derived from the inputs so that the loops also
    type-check inside `jax.shard_map`.
    """
    cost = cost.T  # [T, Q]
    num_targets, num_queries = cost.shape
    no_query = jnp.full_like(valid, -1, dtype=jnp.int32)  # [T]
    no_target = jnp.full_like(cost[0], -1, dtype=jnp.int32)  # [Q]
    rows = jnp.argsort(~valid, stable=True)  # valid targets first
    num_rows = valid.sum()

    def add_row(state: _Assignment) -> _Assignment:
        u, v, target_of = state.u, state.v, state.target_of
        row = rows[state.rows_added]

        def search_step(search: _Search) -> _Search:
            i = search.row
            seen_rows = search.seen_rows.at[i].set(True)
            reduced = search.lowest + cost[i] - u[i] - v
            better = ~search.seen_cols & (reduced < search.shortest)
            path = jnp.where(better, i, search.path)
            shortest = jnp.where(better, reduced, search.shortest)
            candidates = jnp.where(search.seen_cols, jnp.inf, shortest)
            lowest = candidates.min()
            ties = candidates == lowest
            free = ties & (target_of < 0)  # among equal paths, prefer one that ends here
            j = jnp.where(free.any(), jnp.argmax(free), jnp.argmax(ties))
            seen_cols = search.seen_cols.at[j].set(True)
            sink = jnp.where(target_of[j] < 0, j, -1)
            return _Search(jnp.where(sink < 0, target_of[j], i), lowest, sink, shortest, path, seen_rows, seen_cols)

        search = _Search(row=row, lowest=jnp.zeros_like(u[0]), sink=no_target[0], shortest=jnp.full_like(v, jnp.inf),
                         path=no_target, seen_rows=jnp.zeros_like(valid), seen_cols=jnp.zeros_like(no_target, bool))
        search = jax.lax.while_loop(lambda s: s.sink < 0, search_step, search_step(search))

        # Update the potentials so that reduced costs stay non-negative.
        shortest_of_row = search.shortest[jnp.maximum(state.query_of, 0)]
        u = u + jnp.where(search.seen_rows & (jnp.arange(num_targets) != row), search.lowest - shortest_of_row, 0)
        u = u.at[row].add(search.lowest)
        v = v - jnp.where(search.seen_cols, search.lowest - search.shortest, 0)

        # Flip the assignments along the path from the free query back to the new row.
        def flip(walk: _Flip) -> _Flip:
            i = search.path[walk.query]
            previous = walk.query_of[i]
            return _Flip(previous, walk.query_of.at[i].set(walk.query), walk.target_of.at[walk.query].set(i), i == row)

        walk = _Flip(search.sink, state.query_of, target_of, jnp.zeros_like(valid[0]))
        walk = jax.lax.while_loop(lambda w: ~w.done, flip, walk)
        return _Assignment(state.rows_added + 1, u, v, walk.query_of, walk.target_of)

    state = _Assignment(jnp.zeros_like(num_rows), jnp.zeros_like(cost[:, 0]), jnp.zeros_like(cost[0]), no_query, no_target)
    return jax.lax.while_loop(lambda s: s.rows_added < num_rows, add_row, state).target_of


def solve_jax(cost, valid):
    """On-device exact solver. cost [..., B, Q, T], valid [B, T] → [..., B, Q] int32."""
    batch_shape, (num_queries, num_targets) = cost.shape[:-2], cost.shape[-2:]
    if num_targets == 0:
        return jnp.full(batch_shape + (num_queries,), -1, jnp.int32)
    size = int(np.prod(batch_shape))
    valid = jnp.broadcast_to(valid, batch_shape + (num_targets,)).reshape(size, num_targets)
    flat = jax.vmap(_assign_one)(cost.reshape(size, num_queries, num_targets), valid)
    return flat.reshape(batch_shape + (num_queries,))


def _scipy_assign(cost, valid) -> np.ndarray:
    cost, valid = np.asarray(cost), np.asarray(valid)  # callbacks receive jax.Arrays
    assignment = np.full(cost.shape[:-1], -1, np.int32)
    for index in np.ndindex(cost.shape[:-2]):
        columns = np.flatnonzero(valid[index[-1]])
        if columns.size:
            queries, chosen = scipy.optimize.linear_sum_assignment(cost[index][:, columns])
            assignment[index][queries] = columns[chosen]
    return assignment


def solve_scipy(cost, valid):
    """Host solver: scipy's linear_sum_assignment, one callback for all matrices.
    cost [..., B, Q, T], valid [B, T] → [..., B, Q] int32."""
    result = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(_scipy_assign, result, cost, valid)


SOLVERS = {"jax": solve_jax, "scipy": solve_scipy}


def check_matching(solver: str, num_targets: int, num_queries: int) -> None:
    """The matchers' contract: a known solver and a query for every target slot (ConfigError)."""
    if solver not in SOLVERS:
        raise ConfigError(f"config.loss.matcher must be one of {sorted(SOLVERS)}, got {solver!r}")
    if num_targets > num_queries:
        raise ConfigError(f"config.loss.max_targets ({num_targets}) exceeds config.model.num_queries ({num_queries}): "
                          "every target needs its own query")


def match(cost, valid, solver: str = "jax"):
    """Min-cost one-to-one assignment of valid targets to queries.

    cost: [..., B, Q, T] (leading axes, e.g. decoder layers, are solved independently); valid: [B, T]
    bool. Returns [..., B, Q] int32: the target index of each query, -1 where unmatched.
    """
    check_matching(solver, cost.shape[-1], cost.shape[-2])
    cost = jax.lax.stop_gradient(cost.astype(jnp.float32))
    cost = jnp.nan_to_num(cost, nan=NON_FINITE_COST, posinf=NON_FINITE_COST, neginf=NON_FINITE_COST)
    solve = SOLVERS[solver]
    mesh = jax.sharding.get_abstract_mesh()
    if "data" in mesh.axis_names and mesh.shape["data"] > 1 and "data" not in mesh.manual_axes:
        batch_spec = PartitionSpec(*([None] * (cost.ndim - 3)), "data")
        solve = jax.shard_map(solve, in_specs=(batch_spec, PartitionSpec("data")), out_specs=batch_spec)
    return solve(cost, valid)
