"""Memory of the train step (and with --eval the inference step) per device, from XLA's analysis of the
compiled program: nothing runs, so a TPU slice can be checked from any machine.

    python -m benchmarks.memory --config configs/ade20k_swin_l.py --config.batch_size=16 \
        [--topology v5e:2x4] [--eval] [--remat] [--config.fsdp=True] [--config.model.dtype=bfloat16]

The train step is the one train.py compiles for the config: its global batch (config.batch_size, split
over the devices) of config.dataset.image_size crops. --eval adds the inference step eval.py compiles:
config.eval.batch_size (rounded up to the device count) landscape 4:3 images resized by the test
mapper (short side dataset.min_size_test, long side at most max_size_test) and padded as eval pads.
Without --topology the devices are this machine's; with it, the chips of that TPU slice (libtpu
compiles for them here: `pip install libtpu`), e.g. v5e:2x4 (8 chips), v4:2x2x4 (16), v5p:2x2x1 (4),
v6e:4x4 (16). Prints, per device, the arguments (train: parameters, AdamW moments and the batch;
split over devices with config.fsdp), XLA's temporary buffers (activations kept for the backward pass,
work space) and their sum, against the device's memory: what the device reports, or a TPU chip's HBM
(devices.TPU_HBM_GIB). A TPU program that does not fit its chip does not compile: the line then gives
XLA's message, which says how much the temporaries need. --remat turns on config.model.remat_backbone
and remat_decoder.
"""

import time

import jax
from absl import flags
from ml_collections import config_flags

from benchmarks.compare import ROOT, synthetic_batch
from maskformer_jax import cli
from maskformer_jax.data import transforms
from maskformer_jax.data.metadata import dataset_metadata
from maskformer_jax.devices import TPU_HBM_GIB, make_mesh, tpu_topology
from maskformer_jax.errors import ConfigError
from maskformer_jax.models import build_model
from maskformer_jax.predictor import Predictor
from maskformer_jax.training.optimizer import build_optimizer
from maskformer_jax.training.state import create_train_state, state_sharding
from maskformer_jax.training.step import jit_train_step


GIB = 2.0**30


def compile_and_report(what: str, lower, memory_gib: float | None):
    """Compiles `lower()` and prints one line: compile time and per-device arguments, temporaries and
    total against `memory_gib`, or XLA's out-of-memory message when the program does not fit."""
    start = time.perf_counter()
    try:
        compiled = lower().compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        print(f"{what}: compiled in {time.perf_counter() - start:.0f} s; does not fit: {str(error).splitlines()[0]}",
              flush=True)
        return
    analysis = compiled.memory_analysis()
    arguments, temporary = analysis.argument_size_in_bytes / GIB, analysis.temp_size_in_bytes / GIB
    total = arguments + temporary
    line = (f"{what}: compiled in {time.perf_counter() - start:.0f} s; per device: arguments {arguments:.2f} GiB, "
            f"temporary {temporary:.2f} GiB, total {total:.2f} GiB")
    if memory_gib:
        line += f" of {memory_gib:.1f} GiB: " + ("fits" if total <= memory_gib else "does not fit")
    print(line, flush=True)


def main(argv):
    config, name = _CONFIG.value, config_flags.get_config_filename(FLAGS["config"])
    devices = tpu_topology(FLAGS.topology) if FLAGS.topology else jax.devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"config.batch_size {config.batch_size} does not split over {len(devices)} devices")
    if FLAGS.remat:
        config.model.remat_backbone = config.model.remat_decoder = True
    if FLAGS.topology:
        memory_gib = TPU_HBM_GIB[FLAGS.topology.split(":")[0]]
    else:
        memory_gib = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0) / GIB
    size, batch_size = tuple(config.dataset.image_size), config.batch_size
    print(f"{name}: {len(devices)} x {devices[0].device_kind}"
          + (f" ({FLAGS.topology})" if FLAGS.topology else "")
          + f", {config.model.dtype}, remat {FLAGS.remat}, fsdp {config.fsdp}", flush=True)

    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh(devices)
    create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    abstract_state = jax.eval_shape(create)
    sharding = state_sharding(abstract_state, mesh, config.fsdp)
    example = synthetic_batch(batch_size, size, config.loss.max_targets, config.model.num_classes)
    batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in example.items()}
    with jax.set_mesh(mesh):
        train_step = jit_train_step(config, model, optimizer, mesh, sharding)
        compile_and_report(f"train step, batch {batch_size} of {size[0]}x{size[1]}",
                           lambda: train_step.lower(abstract_state, batch), memory_gib)

    if FLAGS.eval:
        dataset = config.dataset
        height, width = transforms.resized_shape(3, 4, dataset.min_size_test, dataset.max_size_test)
        divisor = dataset.size_divisibility or 1
        padded = transforms.round_up(height, divisor), transforms.round_up(width, divisor)
        predictor = Predictor(config, model, dataset_metadata(dataset), devices)
        eval_batch = transforms.round_up(config.eval.batch_size, len(devices))
        compile_and_report(f"inference step ({config.inference.task}), batch {eval_batch} of {padded[0]}x{padded[1]}",
                           lambda: predictor.lower(eval_batch, padded, predictor.canvas(height, width)), memory_gib)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag(str(ROOT / "configs" / "ade20k_swin_l.py"))
    flags.DEFINE_bool("remat", False, "Recompute backbone blocks and decoder layers (config.model.remat_*).")
    flags.DEFINE_string("topology", None, "Compile for this TPU slice instead of this machine's devices, e.g. v5e:2x4.")
    flags.DEFINE_bool("eval", False, "Also compile the inference step at the config's test size.")
    cli.run(main)
