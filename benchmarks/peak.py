"""The machine's measured matmul peak, the denominator of model FLOP utilisation.

    python -m benchmarks.peak [--size 4096] [--dtype float32|bfloat16] [--json]

Times a jitted chain of square matmuls on the default device (after compilation, median of several
runs) and prints FLOP/s (2 n³ per matmul).
"""

import json
import time

import jax
import numpy as np
from absl import flags

from maskformer_jax import cli

CHAIN = 8  # matmuls per call, so that dispatch does not count


def matmul_peak(size: int, dtype: str, repeats: int = 5) -> float:
    """Measured FLOP/s of [size, size] @ [size, size] matmuls in `dtype`."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    a = jax.random.normal(keys[0], (size, size), dtype) / np.sqrt(size)
    b = jax.random.normal(keys[1], (size, size), dtype) / np.sqrt(size)

    @jax.jit
    def chain(x):
        for _ in range(CHAIN):
            x = x @ b
        return x

    chain(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chain(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return CHAIN * 2 * size**3 / float(np.median(times))


def main(argv):
    args = FLAGS
    size = args.size or (1024 if jax.default_backend() == "cpu" else 8192)
    flops = matmul_peak(size, args.dtype)
    if args.json:
        print(json.dumps({"device": str(jax.devices()[0]), "dtype": args.dtype, "size": size, "flops": flops}))
    else:
        print(f"{jax.devices()[0]}: {flops / 1e9:.1f} GFLOP/s ({args.dtype}, {size}x{size} matmuls)")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_integer("size", 0, "Matrix side (default: 1024 on CPU, 8192 otherwise).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Matmul dtype.")
    flags.DEFINE_bool("json", False, "Print one JSON line.")
    cli.run(main)
