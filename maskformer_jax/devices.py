"""Where the jitted programs run: the device mesh, TPU topologies to compile for without a TPU, and
XLA options for compiling them."""

import functools
import importlib.util
import math
import os

import jax
from jax.sharding import Mesh

from maskformer_jax.errors import ConfigError

# High-bandwidth memory per chip in GiB, as Google Cloud's TPU system architecture pages give it
# (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e).
TPU_HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# Chips with two TensorCores that JAX drives as one device (megacore); the others have one.
_MEGACORE = ("v4", "v5p")
_ACCELERATOR_TYPES = {"v4": "v4-{cores}", "v5e": "v5litepod-{chips}", "v5p": "v5p-{cores}", "v6e": "v6e-{chips}"}


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices with one axis, "data". Its axis type is Auto: under jax.make_mesh's
    default (Explicit), flax's Dropout fails to trace in the train step."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def tpu_topology(name: str) -> list:
    """The devices of a TPU slice, e.g. "v5e:2x4" (8 chips) or "v4:2x2x4" (16 chips): compile-only
    devices, one per chip, that programs are compiled for ahead of time on any machine (this one has no
    TPU). Needs the libtpu package (`pip install libtpu`); the chip must be one of TPU_HBM_GIB."""
    version, _, shape = name.partition(":")
    if version not in TPU_HBM_GIB or not shape:
        raise ConfigError(f"--topology {name!r}: expected <chip>:<shape> with a chip of {sorted(TPU_HBM_GIB)}, "
                          "e.g. v5e:2x4 or v4:2x2x4")
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"--topology {name}: compiling for a TPU needs the libtpu package (pip install libtpu)")
    sides = [int(side) for side in shape.split("x")]
    chips = math.prod(sides)
    # libtpu reads the slice from these on a TPU host; set them so that it does not probe the network.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _ACCELERATOR_TYPES[version].format(chips=chips, cores=2 * chips))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compile-only devices need no chip to themselves: let other processes load libtpu at the same time.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    options = {"chip_config_name": "megacore"} if version in _MEGACORE else {}
    if chips < 4:  # a slice smaller than a host's 2x2 chips is one host of that size
        options["chips_per_host_bounds"] = tuple(sides + [1] * (3 - len(sides)))
    try:
        return topologies.get_topology_desc(name, "tpu", **options).devices
    except jax.errors.JaxRuntimeError as error:
        raise ConfigError(f"--topology {name}: libtpu does not accept it: {str(error).splitlines()[0]}") from error


# XLA's CPU backend hands dots, reductions and convolutions to YNNPACK by default. On the 2-core x86
# machine of README's Performance section its convolutions are slower than XLA's own (Eigen): a 3x3
# 256→256 convolution at 128² takes 111 vs 78 ms; at 512², the ResNet-50 train step 3.59 vs 3.27 s and
# its inference 1.20 vs 1.00 s (medians of interleaved runs). Dots and reductions stay with YNNPACK,
# which makes the Swin-T train step faster (2.16 s with them, 2.68 s without).
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {_YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_options_known() -> bool:
    try:
        jax.jit(lambda x: x).lower(0.0).compile(_CPU_OPTIONS)
    except jax.errors.JaxRuntimeError:  # an XLA without this option, or without these values
        return False
    return True


def compiler_options(platform: str | None = None) -> dict:
    """XLA options for a jitted step of these models compiled for `platform` (default: the default
    backend's): `jax.jit(f, compiler_options=compiler_options(platform))`.

    On CPU, convolutions go to XLA's own kernels instead of YNNPACK. Empty on other platforms, when
    XLA_FLAGS sets the option itself, and on an XLA that does not know it.
    """
    if (platform or jax.default_backend()) != "cpu" or _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(_CPU_OPTIONS) if _cpu_options_known() else {}
