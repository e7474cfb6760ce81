"""Checkpoints: the state and the data iterator round-trip; init_from takes only the weights."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskformer_jax.training.checkpoint import Checkpointer, init_weights, load_weights, with_shardings
from maskformer_jax.devices import make_mesh
from maskformer_jax.training.state import TrainState, state_sharding


def small_state(value):
    params = {"class_embed": {"kernel": jnp.full((3, 2), value), "bias": jnp.zeros(2)}}
    return TrainState(step=jnp.int32(7), params=params, frozen={"norm": {"scale": jnp.full((2,), 2.0)}},
                      opt_state=optax.adam(1e-3).init(params), rng=jax.random.PRNGKey(0))


def test_state_and_iterator_round_trip_and_weights_only_loading(tmp_path):
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(iterator), next(iterator)
    checkpointer = Checkpointer(tmp_path, every=1, keep=2)
    state = small_state(1.5)
    checkpointer.save(7, state, iterator, force=True)
    checkpointer.close()

    abstract = jax.eval_shape(lambda: small_state(0.0))
    target = with_shardings(abstract, state_sharding(abstract, make_mesh()))
    fresh = iter(grain.MapDataset.range(10).to_iter_dataset())
    restored = Checkpointer(tmp_path, every=1, keep=2).restore(target, fresh)
    assert int(restored.step) == 7 and next(fresh) == 2  # the iterator continues after 0, 1
    np.testing.assert_array_equal(restored.params["class_embed"]["kernel"], state.params["class_embed"]["kernel"])

    weights_target = {"params": target.params, "frozen": target.frozen}
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "7"):
        weights = load_weights(path, weights_target)
        assert set(weights) == {"params", "frozen"}
        np.testing.assert_array_equal(weights["params"]["class_embed"]["kernel"], np.full((3, 2), 1.5))
        np.testing.assert_array_equal(weights["frozen"]["norm"]["scale"], [2.0, 2.0])


def test_init_from_another_class_count_reinitialises_exactly_the_mismatching_heads(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1, keep=1)
    checkpointer.save(1, small_state(1.5), iter(grain.MapDataset.range(2).to_iter_dataset()), force=True)
    checkpointer.close()
    fresh = {"params": {"class_embed": {"kernel": jnp.full((3, 5), 9.0), "bias": jnp.zeros(2)}},
             "frozen": {"norm": {"scale": jnp.ones(2)}}}  # 5 outputs instead of 2: a new class count
    with pytest.raises(ValueError, match=r"params/class_embed/kernel \(3, 2\) → \(3, 5\).*init_reinitialize_mismatched"):
        init_weights(tmp_path, fresh)
    weights, reinitialised = init_weights(tmp_path, fresh, reinitialize_mismatched=True)
    assert reinitialised == ["params/class_embed/kernel"]
    np.testing.assert_array_equal(weights["params"]["class_embed"]["kernel"], np.full((3, 5), 9.0))  # fresh
    np.testing.assert_array_equal(weights["frozen"]["norm"]["scale"], [2.0, 2.0])  # from the checkpoint
    extra = {"params": {**fresh["params"], "query_embed": jnp.zeros((4, 3))}, "frozen": fresh["frozen"]}
    with pytest.raises(ValueError, match="lacks 1 variables of this model: params/query_embed"):
        init_weights(tmp_path, extra, reinitialize_mismatched=True)
