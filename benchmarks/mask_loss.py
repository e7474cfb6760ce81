"""Peak memory and time of the set loss and its gradient: dense mask losses vs point-sampled ones.

    python -m benchmarks.mask_loss [--size 640] [--batch_size 2] [--targets 100] [--points 12544]

Peak memory is XLA's compiled estimate for the jitted loss + gradient (argument, output and
temporary buffers), so it is the same on any machine with the same backend.
"""


import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.matching import median_ms
from configs import base
from maskformer_jax import cli
from maskformer_jax.losses import set_loss


def main(argv):
    args = FLAGS
    rng = np.random.default_rng(0)
    layers, queries, classes, size = 6, 100, 150, args.size
    outputs = {
        "class_logits": jnp.asarray(rng.normal(size=(layers, args.batch_size, queries, classes + 1)), jnp.float32),
        "mask_logits": jnp.asarray(rng.normal(size=(layers, args.batch_size, queries, size // 4, size // 4)), jnp.float32),
    }
    blocks = rng.integers(-1, args.targets, size=(args.batch_size, size // 16, size // 16))
    batch = {
        "segments": jnp.asarray(blocks.repeat(16, 1).repeat(16, 2), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, classes, size=(args.batch_size, args.targets)), jnp.int32),
    }
    print(f"{jax.devices()[0].device_kind}, {layers} layers, batch {args.batch_size}, {size}x{size}, T={args.targets}")
    print(f"{'mask loss':<28} {'peak MiB':>10} {'ms (loss+grad)':>15}")
    for num_points in (0, args.points):
        config = base.get_config().loss
        config.num_points = num_points
        step = jax.jit(jax.value_and_grad(lambda o, b, k: set_loss(o, b, config, k)[0]))
        memory = step.lower(outputs, batch, jax.random.key(0)).compile().memory_analysis()
        peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        milliseconds = median_ms(lambda: jax.block_until_ready(step(outputs, batch, jax.random.key(0))), args.repeats)
        name = "dense (paper)" if num_points == 0 else f"{num_points} points (Mask2Former)"
        print(f"{name:<28} {peak / 2**20:>10.0f} {milliseconds:>15.0f}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_integer("size", 640, "Image side.")
    flags.DEFINE_integer("batch_size", 2, "Images per batch.")
    flags.DEFINE_integer("targets", 100, "Target slots per image.")
    flags.DEFINE_integer("points", 12544, "Points of the point-sampled loss.")
    flags.DEFINE_integer("repeats", 3, "Timed runs (the median is printed).")
    cli.run(main)
