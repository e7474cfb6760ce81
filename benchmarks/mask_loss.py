"""Peak memory and time of the set loss and its gradient: dense mask losses vs point-sampled ones.

    python benchmarks/mask_loss.py [--size 640] [--batch 2] [--targets 100] [--points 12544]

Peak memory is XLA's compiled estimate for the jitted loss + gradient (argument, output and
temporary buffers), so it is the same on any machine with the same backend.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import base  # noqa: E402
from maskformer_jax.losses import set_loss  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--points", type=int, default=12544)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers, queries, classes, size = 6, 100, 150, args.size
    outputs = {
        "class_logits": jnp.asarray(rng.normal(size=(layers, args.batch, queries, classes + 1)), jnp.float32),
        "mask_logits": jnp.asarray(rng.normal(size=(layers, args.batch, queries, size // 4, size // 4)), jnp.float32),
    }
    blocks = rng.integers(-1, args.targets, size=(args.batch, size // 16, size // 16))
    batch = {
        "segments": jnp.asarray(blocks.repeat(16, 1).repeat(16, 2), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, classes, size=(args.batch, args.targets)), jnp.int32),
    }
    print(f"{jax.devices()[0].device_kind}, {layers} layers, batch {args.batch}, {size}x{size}, T={args.targets}")
    print(f"{'mask loss':<28} {'peak MiB':>10} {'ms (loss+grad)':>15}")
    for num_points in (0, args.points):
        config = base.get_config().loss
        config.num_points = num_points
        step = jax.jit(jax.value_and_grad(lambda o, b, k: set_loss(o, b, config, k)[0]))
        memory = step.lower(outputs, batch, jax.random.key(0)).compile().memory_analysis()
        peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        jax.block_until_ready(step(outputs, batch, jax.random.key(0)))
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(step(outputs, batch, jax.random.key(i)))
            times.append(time.perf_counter() - start)
        name = "dense (paper)" if num_points == 0 else f"{num_points} points (Mask2Former)"
        print(f"{name:<28} {peak / 2**20:>10.0f} {1e3 * np.median(times):>15.0f}")


if __name__ == "__main__":
    main()
