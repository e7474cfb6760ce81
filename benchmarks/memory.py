"""Memory of one train step per device, from XLA's analysis of the compiled step (nothing is run).

    python -m benchmarks.memory --config configs/ade20k_swin_l.py --config.batch_size=16 \
        [--config.model.dtype=bfloat16] [--remat] [--config.fsdp=True]

The step is the one train.py compiles for the config: its global batch (config.batch_size, split over
all devices) of config.dataset.image_size crops. Prints, per device, the train state (parameters and
AdamW moments; split over devices with config.fsdp), XLA's temporary buffers (activations kept for
the backward pass and work space) and their sum, next to the memory the device reports. --remat
turns on config.model.remat_backbone and remat_decoder.
"""

import time

import jax
from absl import flags
from ml_collections import config_flags

from benchmarks.compare import ROOT, synthetic_batch
from maskformer_jax import cli
from maskformer_jax.devices import make_mesh
from maskformer_jax.errors import ConfigError
from maskformer_jax.models import build_model
from maskformer_jax.training.optimizer import build_optimizer
from maskformer_jax.training.state import create_train_state, state_sharding
from maskformer_jax.training.step import jit_train_step


def main(argv):
    config, devices = _CONFIG.value, jax.device_count()
    if config.batch_size % devices:
        raise ConfigError(f"config.batch_size {config.batch_size} does not split over {devices} devices")
    if FLAGS.remat:
        config.model.remat_backbone = config.model.remat_decoder = True
    size, batch_size, dtype = tuple(config.dataset.image_size), config.batch_size, config.model.dtype
    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
    create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    abstract_state = jax.eval_shape(create)
    sharding = state_sharding(abstract_state, mesh, config.fsdp)
    example = synthetic_batch(batch_size, size, config.loss.max_targets, config.model.num_classes)
    batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in example.items()}

    start = time.perf_counter()
    name = config_flags.get_config_filename(FLAGS["config"])
    print(f"compiling the {name} train step: batch {batch_size} on {devices} {jax.devices()[0].platform} "
          f"device(s), {size[0]}x{size[1]}, {dtype}, remat {FLAGS.remat}, fsdp {config.fsdp} ...", flush=True)
    with jax.set_mesh(mesh):
        compiled = jit_train_step(config, model, optimizer, mesh, sharding).lower(abstract_state, batch).compile()
    analysis = compiled.memory_analysis()
    gib = 2.0**30
    state, temp = analysis.argument_size_in_bytes / gib, analysis.temp_size_in_bytes / gib
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    print(f"compiled in {time.perf_counter() - start:.0f} s; per device: state and batch {state:.2f} GiB, "
          f"temporary {temp:.2f} GiB, total {state + temp:.2f} GiB"
          + (f" of {limit / gib:.1f} GiB" if limit else ""))


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag(str(ROOT / "configs" / "ade20k_swin_l.py"))
    flags.DEFINE_bool("remat", False, "Recompute backbone blocks and decoder layers (config.model.remat_*).")
    cli.run(main)
