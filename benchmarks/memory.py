"""Memory of one train step per device, from XLA's analysis of the compiled step (nothing is run).

    python benchmarks/memory.py --config ade20k_swin_l --batch 16 [--size 640] [--remat] [--fsdp] [--dtype bfloat16]

--size is the training crop: a side, HxW (e.g. 512x1024), or by default the config's
dataset.image_size (Cityscapes: 512x1024). --batch is the global batch, split over all devices as in train.py. Prints, per device, the train
state (parameters and AdamW moments; split over devices with --fsdp), XLA's temporary buffers
(activations kept for the backward pass and work space) and their sum, next to the memory the
device reports. --remat turns on config.model.remat_backbone and remat_decoder.
"""

import argparse
import importlib
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.compare import synthetic_batch  # noqa: E402
from maskformer_jax.models import build_model  # noqa: E402
from maskformer_jax.training.optimizer import build_optimizer  # noqa: E402
from maskformer_jax.devices import make_mesh
from maskformer_jax.training.state import create_train_state, state_sharding  # noqa: E402
from maskformer_jax.training.step import jit_train_step  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ade20k_swin_l", help="a module of configs/")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--size", default="", help="crop side or HxW (default: the config's dataset.image_size)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", action="store_true", help="recompute backbone blocks and decoder layers")
    parser.add_argument("--fsdp", action="store_true", help="split large parameters and moments over devices")
    args = parser.parse_args()
    devices = jax.device_count()
    if args.batch % devices:
        sys.exit(f"--batch {args.batch} does not split over {devices} devices")

    config = importlib.import_module(f"configs.{args.config}").get_config()
    if args.size:
        config.dataset.image_size = tuple(int(side) for side in (args.size.split("x") * 2)[:2])
    size = tuple(config.dataset.image_size)
    config.batch_size, config.model.dtype = args.batch, args.dtype
    config.model.remat_backbone = config.model.remat_decoder = args.remat
    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
    create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    abstract_state = jax.eval_shape(create)
    sharding = state_sharding(abstract_state, mesh, args.fsdp)
    example = synthetic_batch(args.batch, size, config.loss.max_targets, config.model.num_classes)
    batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in example.items()}

    start = time.perf_counter()
    print(f"compiling the {args.config} train step: batch {args.batch} on {devices} {jax.devices()[0].platform} "
          f"device(s), {size[0]}x{size[1]}, {args.dtype}, remat {args.remat}, fsdp {args.fsdp} ...", flush=True)
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
    main()
