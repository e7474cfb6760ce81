"""Where the jitted programs run: the device mesh, and XLA options for compiling them."""

import functools
import os

import jax
from jax.sharding import Mesh


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices with one axis, "data" (Auto axis type: see JAX-NOTES on Dropout)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))



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


def compiler_options() -> dict:
    """XLA options for a jitted step of these models: `jax.jit(f, compiler_options=compiler_options())`.

    On CPU, convolutions go to XLA's own kernels instead of YNNPACK. Empty on other backends, when
    XLA_FLAGS sets the option itself, and on an XLA that does not know it.
    """
    if jax.default_backend() != "cpu" or _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(_CPU_OPTIONS) if _cpu_options_known() else {}
