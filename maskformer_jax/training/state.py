"""The training state, its creation, and how it is laid out over the device mesh."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maskformer_jax.models import init_variables

# FSDP shards arrays with at least this many elements along one axis divisible by the data axis.
FSDP_MIN_SIZE = 2**18


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken (skipped non-finite updates included)
    params: Any  # trained parameters
    frozen: Any  # the "frozen" collection (frozen BatchNorm), never updated
    opt_state: optax.OptState
    rng: jax.Array  # uint32 [2] base key; each step folds in its step number

    @property
    def variables(self) -> dict:
        """The model's variables (models.COLLECTIONS), as `model.apply` takes them."""
        return {"params": self.params, "frozen": self.frozen}


def create_train_state(config: ml_collections.ConfigDict, model, optimizer, rng) -> TrainState:
    """Initialise parameters at the config's image size (batch 1) and the optimizer state.

    rng: a uint32 [2] key (`jax.random.PRNGKey(seed)`), which checkpoints store as a plain array.
    """
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, init_rng, config.dataset.image_size)
    return TrainState(step=jnp.zeros((), jnp.int32), opt_state=optimizer.init(variables["params"]), rng=state_rng,
                      **variables)


def init_train_state(create, sharding) -> TrainState:
    """Run `create` (which returns a TrainState) jitted with these output shardings, once."""
    return jax.block_until_ready(jax.jit(create, out_shardings=sharding)())


def _leaf_spec(shape, data_size: int, fsdp: bool) -> PartitionSpec:
    size = 1
    for dim in shape:
        size *= dim
    if not fsdp or data_size == 1 or size < FSDP_MIN_SIZE:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):  # the largest divisible axis
        if shape[axis] % data_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "data"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_sharding(abstract_state: TrainState, mesh: Mesh, fsdp: bool = False):
    """Replicated by default; with `fsdp`, large parameters and their optimizer moments are split
    along their largest axis over "data" (XLA gathers them where they are used)."""
    data_size = mesh.shape["data"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _leaf_spec(getattr(leaf, "shape", ()), data_size, fsdp)), abstract_state
    )
