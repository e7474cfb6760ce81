"""Run by test_multidevice.py in a subprocess with 8 CPU devices; prints a JSON report."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
# The 8 devices are the host split in 8, also on a machine with an accelerator (which has fewer).
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from configs import base  # noqa: E402
from maskformer_jax import matching  # noqa: E402
from maskformer_jax.losses import set_loss  # noqa: E402
from tests.test_losses import random_batch  # noqa: E402

callback_batch_sizes = []
_scipy_assign = matching._scipy_assign


def recording_scipy_assign(cost, valid):
    callback_batch_sizes.append(int(cost.shape[-3]))
    return _scipy_assign(cost, valid)


matching._scipy_assign = recording_scipy_assign

outputs, batch = random_batch(11, targets_per_image=(3, 0, 5, 9, 1, 0, 6, 2))
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
report = {"devices": jax.device_count()}
for solver in ("jax", "scipy"):
    config = base.get_config().loss
    config.matcher = solver
    loss = jax.jit(lambda o, b: set_loss(o, b, config))
    _, single = jax.block_until_ready(loss(outputs, batch))
    callback_batch_sizes.clear()
    with jax.set_mesh(mesh):
        sharded_outputs = jax.device_put(outputs, NamedSharding(mesh, PartitionSpec(None, "data")))
        sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
        _, sharded = loss(sharded_outputs, sharded_batch)
    report[solver] = {
        "single": {k: float(v) for k, v in single.items()},
        "sharded": {k: float(v) for k, v in sharded.items()},
        "callback_batch_sizes": list(callback_batch_sizes),
    }

# The on-device solver inside a user's own shard_map (varying-type checks on).
cost = np.random.default_rng(0).normal(size=(6, 8, 12, 10)).astype(np.float32)
valid = np.arange(10)[None] < np.arange(8)[:, None]
spec = PartitionSpec(None, "data")
inside = jax.jit(jax.shard_map(matching.solve_jax, mesh=mesh, in_specs=(spec, PartitionSpec("data")), out_specs=spec))
report["shard_map_solver_equal"] = bool(np.array_equal(inside(cost, valid), matching.solve_jax(cost, valid)))
print(json.dumps(report))
