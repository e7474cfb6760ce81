"""The convolution with a matmul kernel gradient equals lax's convolution, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from maskformer_jax import devices
from maskformer_jax.devices import compiler_options
from maskformer_jax.models.conv import Conv, conv_general_dilated

LAYOUT = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation",
    [
        (1, 1, ((0, 0), (0, 0)), 1),  # ResNet 1x1
        (1, 2, ((0, 0), (0, 0)), 1),  # strided shortcut projection
        (3, 1, ((1, 1), (1, 1)), 1),  # pixel decoder / bottleneck 3x3
        (3, 2, ((1, 1), (1, 1)), 1),  # strided 3x3: the last padded row is never read
        (7, 2, ((3, 3), (3, 3)), 1),  # ResNet stem
        (4, 4, "VALID", 1),  # Swin patch embedding
        (3, 1, "SAME", 1),
        (2, 1, ((0, 1), (1, 0)), 1),  # stride 1, even kernel, uneven padding: the row-shift taps
        (3, 1, ((2, 2), (2, 2)), 2),  # dilated (R101c res5): falls back to lax
    ],
)
@pytest.mark.parametrize("out_channels", [3, 6])  # fewer than the 5 input channels, or more
def test_values_and_gradients_equal_lax(kernel, stride, padding, dilation, out_channels):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (2, 13, 11, 5))
    w = jax.random.normal(keys[1], (kernel, kernel, 5, out_channels))

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=LAYOUT)
        return jnp.sum(y * jax.random.normal(keys[2], y.shape)), y

    (ours, y_ours), grads_ours = jax.value_and_grad(loss, (1, 2), has_aux=True)(conv_general_dilated, x, w)
    (ref, y_ref), grads_ref = jax.value_and_grad(loss, (1, 2), has_aux=True)(lax.conv_general_dilated, x, w)
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    for ours_grad, ref_grad in zip(grads_ours, grads_ref):
        np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-4, atol=1e-4)
    rewritten = "custom_vjp_call" in str(jax.make_jaxpr(lambda x, w: loss(conv_general_dilated, x, w))(x, w))
    assert rewritten == (dilation == 1)


@pytest.mark.parametrize("platform, convolutions", [("cpu", 2), ("cuda", 3), ("tpu", 3)])
def test_kernel_gradient_is_matmuls_on_cpu_and_xlas_convolution_elsewhere(platform, convolutions):
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    loss = lambda x, w: jnp.sum(conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=LAYOUT) ** 2)  # noqa: E731
    module = jax.export.export(jax.jit(jax.grad(loss, (0, 1))), platforms=[platform])(x, w).mlir_module()
    assert module.count("stablehlo.convolution") == convolutions  # forward, input gradient (and kernel gradient)
    assert ("stablehlo.dot_general" in module) == (platform == "cpu")


def test_flax_module_keeps_parameters_and_bfloat16_gradient_dtype():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4))
    ours, ref = Conv(3, (3, 3), dtype=jnp.bfloat16), nn.Conv(3, (3, 3), dtype=jnp.bfloat16)
    params = ours.init(jax.random.PRNGKey(1), x)
    assert "custom_vjp_call" in str(jax.make_jaxpr(ours.apply)(params, x))
    assert jax.tree.map(jnp.shape, params) == {"params": {"kernel": (3, 3, 4, 3), "bias": (3,)}}
    grads = jax.grad(lambda p: jnp.sum(ours.apply(p, x).astype(jnp.float32) ** 2))(params)
    assert grads["params"]["kernel"].dtype == jnp.float32
    ref_grads = jax.grad(lambda p: jnp.sum(ref.apply(p, x).astype(jnp.float32) ** 2))(params)
    np.testing.assert_allclose(grads["params"]["kernel"], ref_grads["params"]["kernel"], rtol=0.05, atol=0.05)


def test_compiler_options_keep_cpu_convolutions_out_of_ynnpack_with_the_same_values(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the options are XLA CPU's; other backends get none (checked below)")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    options = compiler_options()
    assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 8))
    step = lambda x, w: jax.grad(lambda w: jnp.sum(conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=LAYOUT) ** 2))(w)
    np.testing.assert_allclose(jax.jit(step, compiler_options=options)(x, w), jax.jit(step)(x, w), rtol=1e-5, atol=1e-4)


def test_compiler_options_defer_to_xla_flags_and_to_an_xla_without_the_option(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert compiler_options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(devices, "_CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    devices._cpu_options_known.cache_clear()
    try:
        assert compiler_options() == {}
    finally:
        devices._cpu_options_known.cache_clear()
