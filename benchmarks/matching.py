"""Time of one batched matching (6 decoder layers x B images, Q queries, T target slots) per solver.

    python -m benchmarks.matching [--batch_size 16] [--queries 100] [--repeats 10]

"jax" and "scipy" are jitted through `maskformer_jax.matching.match` (after warm-up); "scipy per
image" calls linear_sum_assignment on the host for each matrix, the way the reference does.
Costs are random normal; "full" has every slot valid, "half" half of them (padding skipped).
"""

import time

import jax
import numpy as np
import scipy.optimize
from absl import flags

from maskformer_jax import cli
from maskformer_jax.matching import match

LAYERS = 6


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def scipy_per_image(cost, valid):
    for index in np.ndindex(cost.shape[:2]):
        columns = np.flatnonzero(valid[index[1]])
        scipy.optimize.linear_sum_assignment(cost[index][:, columns])


def main(argv):
    args = FLAGS
    rng = np.random.default_rng(0)
    print(f"{jax.devices()[0].device_kind}, {LAYERS} layers x batch {args.batch_size}, {args.queries} queries; ms, median")
    print(f"{'T':>4} {'valid':>6} {'jax':>9} {'scipy':>9} {'scipy per image':>16}")
    for num_targets in (20, 50, 100):
        for fill in ("full", "half"):
            cost = rng.normal(size=(LAYERS, args.batch_size, args.queries, num_targets)).astype(np.float32)
            valid = np.arange(num_targets)[None].repeat(args.batch_size, 0) < (num_targets if fill == "full" else num_targets // 2)
            device_cost, device_valid = jax.device_put((cost, valid))
            timings = []
            for solver in ("jax", "scipy"):
                solve = jax.jit(match, static_argnames="solver")
                timings.append(median_ms(lambda: solve(device_cost, device_valid, solver=solver).block_until_ready(), args.repeats))
            timings.append(median_ms(lambda: scipy_per_image(cost, valid), args.repeats))
            print(f"{num_targets:>4} {fill:>6} {timings[0]:>9.2f} {timings[1]:>9.2f} {timings[2]:>16.2f}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_integer("batch_size", 16, "Images per batch.")
    flags.DEFINE_integer("queries", 100, "Queries per image.")
    flags.DEFINE_integer("repeats", 10, "Timed runs per solver (the median is printed).")
    cli.run(main)
