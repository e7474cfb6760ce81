"""Checkpoints: the state and the data iterator round-trip; init_from takes only the weights."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskformer_jax.training.checkpoint import Checkpointer, load_weights, with_shardings
from maskformer_jax.training.state import TrainState, make_mesh, state_sharding


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
