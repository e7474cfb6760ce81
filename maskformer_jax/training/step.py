"""One jitted training step over the device mesh: forward, matching, loss, gradients, update."""

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from maskformer_jax.data.pipeline import BATCH_KEYS
from maskformer_jax.data.transforms import padding_absent
from maskformer_jax.losses import set_loss
from maskformer_jax.models import normalize
from maskformer_jax.devices import compiler_options
from maskformer_jax.training.optimizer import optimizer_metrics
from maskformer_jax.training.state import TrainState

def make_train_step(config: ml_collections.ConfigDict, model, optimizer):
    """(state, batch) → (state, metrics); batch holds image, valid, segments, labels (BATCH_KEYS).

    With padding absent (`transforms.padding_absent`), padded pixels are 0 after normalisation (as
    detectron2's ImageList pads) and `valid` reaches the model (attention, position encoding) and
    the loss (mask terms and costs over each image's pixels); otherwise padding counts as image.
    """
    absent = padding_absent(config.dataset)

    def train_step(state: TrainState, batch):
        with jax.default_matmul_precision(config.model.precision):  # the loss and matching costs too
            return step(state, batch)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        dropout_rng, loss_rng = jax.random.split(rng)
        valid = batch["valid"] if absent else None
        images = normalize(batch["image"], valid)

        def loss_fn(params):
            outputs = model.apply(dict(state.variables, params=params), images, valid, train=True,
                                  rngs={"dropout": dropout_rng})
            return set_loss(outputs, batch, config.loss, loss_rng, valid)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics.update(optimizer_metrics(config, opt_state))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def global_batch(local_batch, mesh):
    """This process's numpy batch → global jax.Arrays sharded over "data" (BATCH_KEYS only).

    For CPU devices the arrays are copied first: a CPU device uses host buffers in place, and grain's
    worker processes deliver them in shared memory, which must not outlive the workers (it leaked at
    exit). Accelerators copy them to device memory anyway.
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    host_array = np.array if mesh.devices.flat[0].platform == "cpu" else np.asarray
    return {key: jax.make_array_from_process_local_data(sharding, host_array(local_batch[key])) for key in BATCH_KEYS}


def jit_train_step(config, model, optimizer, mesh, sharding):
    """The train step jitted over the mesh, donating the state; call it under `jax.set_mesh(mesh)`."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(
        make_train_step(config, model, optimizer),
        in_shardings=(sharding, {key: data for key in BATCH_KEYS}),
        out_shardings=(sharding, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
        compiler_options=compiler_options(mesh.devices.flat[0].platform),
    )
