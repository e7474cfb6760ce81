"""Run by test_training.py in a subprocess with 8 CPU devices: one train step on 1 device vs on 8
devices (batch sharded over "data", large parameters and moments FSDP-sharded); prints a JSON report of the largest differences."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
# The 8 devices are the host split in 8, also on a machine with an accelerator (which has fewer).
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny  # noqa: E402
from maskformer_jax.data.pipeline import train_pipeline  # noqa: E402
from maskformer_jax.models import build_model  # noqa: E402
from maskformer_jax import devices as devices_lib  # noqa: E402
from maskformer_jax.training import state as state_lib  # noqa: E402
from maskformer_jax.training.optimizer import build_optimizer  # noqa: E402
from maskformer_jax.training.step import global_batch, jit_train_step  # noqa: E402

state_lib.FSDP_MIN_SIZE = 4096  # the tiny model's kernels are small; shard them anyway
config = tiny.get_config()
config.batch_size = 8
model, optimizer = build_model(config.model), build_optimizer(config)
batch = next(iter(train_pipeline(config, process_index=0, process_count=1)))


def one_step(devices, fsdp):
    mesh = devices_lib.make_mesh(devices)
    create = lambda: state_lib.create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    sharding = state_lib.state_sharding(jax.eval_shape(create), mesh, fsdp)
    state = jax.jit(create, out_shardings=sharding)()
    sharded = sum(1 for s in jax.tree.leaves(sharding) if s.spec != jax.sharding.PartitionSpec())
    with jax.set_mesh(mesh):
        state, metrics = jit_train_step(config, model, optimizer, mesh, sharding)(state, global_batch(batch, mesh))
    return jax.device_get(state.params), {k: float(v) for k, v in metrics.items()}, sharded


reference_params, reference_metrics, _ = one_step(jax.devices()[:1], False)
report = {"devices": jax.device_count(), "loss": reference_metrics["loss"]}
params, metrics, sharded = one_step(jax.devices(), True)  # batch over "data", FSDP as well
pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)))
report["fsdp"] = {
    "sharded_leaves": sharded,
    "loss_relative": abs(metrics["loss"] - reference_metrics["loss"]) / abs(reference_metrics["loss"]),
    # Elementwise |a - b| <= 1e-5 |b| + 1e-6: Adam's g / (|g| + eps) turns summation-order rounding
    # in near-zero gradients into differences of up to ~1e-7; 1e-6 is 1% of one step at lr 1e-4.
    "params_close": all(bool(np.allclose(a, b, rtol=1e-5, atol=1e-6)) for a, b in pairs),
    "param_max_abs_difference": max(float(np.max(np.abs(a - b))) for a, b in pairs),
    "params_changed": any(bool(np.any(a != b)) for a, b in pairs),
}
print(json.dumps(report))
