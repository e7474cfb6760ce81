"""A drop-in for `lax.conv_general_dilated` whose kernel gradient on CPU is computed with matmuls.

XLA's CPU backend computes a convolution's kernel gradient as another convolution whose window is the
whole feature map. In YNNPACK (its default) that was 5x slower than the forward pass for the pixel
decoder's 3x3 convolutions (256 channels at stride 4) and 5-9x slower than the same product written
as a matmul for 1x1 convolutions at large resolutions; in XLA's own kernels (`devices.compiler_options()`)
it is about as fast as the matmuls for stride-1 3x3 convolutions and 1.4-2.5x slower for 1x1 and
strided ones. Here the kernel gradient is one matmul per kernel tap of the
shifted input with the output gradient (no [B, h, w, kh·kw·C] patch tensor); the forward pass and
the input gradient stay XLA's own. Values equal the plain convolution's up to float rounding; the
saved residuals are the same. Only on CPU: on GPU and TPU the kernel gradient stays XLA's own (cuDNN's
on GPU), which the numbers above do not speak for.

Pass it to Flax as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`. Only the NHWC/HWIO,
undilated, ungrouped case is rewritten; anything else goes to `lax.conv_general_dilated` unchanged.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _plain(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def window_taps(x, window, strides, out_size):
    """What a sliding window reads from a padded x [B, H, W, C], one array per window position: tap (i, j)
    holds x[:, i + s_h·r, j + s_w·c] for each output row r < h and column c < w → kh·kw arrays [B, h, w, C]."""
    (kh, kw), (sh, sw), (height, width) = window, strides, out_size
    return [x[:, i : i + sh * (height - 1) + 1 : sh, j : j + sw * (width - 1) + 1 : sw] for i in range(kh) for j in range(kw)]


def kernel_gradient(x, grad, kernel_shape, strides, padding):
    """∂loss/∂kernel of a NHWC/HWIO convolution. x: [B, H, W, C]; grad: [B, h, w, O] → [kh, kw, C, O].

    One product per kernel tap, [B·h·w, C]ᵀ @ [B·h·w, O], over the input shifted by that tap. A
    product over positions needs one operand transposed: the output gradient when it has no more
    channels than the input (transposed once, shared by all taps), else each tap of the input.

    At stride 1 the taps are not sliced out of the padded input: with the output gradient zero-padded
    to the padded input's size and both flattened to rows, tap (i, j) is the input's rows shifted by
    i·W + j, a contiguous slice (the extra rows meet zero gradients).
    """
    kh, kw, channels, out = kernel_shape
    height, width = grad.shape[1:3]
    (sh, sw), ((top, bottom), (left, right)) = strides, padding
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    if (sh, sw) == (1, 1):
        padded_width = x.shape[2]
        grad = jnp.pad(grad, ((0, 0), (0, kh - 1), (0, kw - 1), (0, 0))).reshape(-1, out)
        x = x.reshape(-1, channels)
        rows = grad.shape[0] - (kh - 1) * padded_width - (kw - 1)
        grad = grad[:rows]
        taps = [lax.slice_in_dim(x, i * padded_width + j, i * padded_width + j + rows) for i in range(kh) for j in range(kw)]
    else:
        grad = grad.reshape(-1, out)
        taps = [tap.reshape(-1, channels) for tap in window_taps(x, (kh, kw), strides, (height, width))]
    if out <= channels:
        products = [jnp.einsum("po,pc->oc", grad, tap, preferred_element_type=jnp.float32).T for tap in taps]
    else:
        products = [jnp.einsum("pc,po->co", tap, grad, preferred_element_type=jnp.float32) for tap in taps]
    return jnp.stack(products).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    return _plain(x, kernel, strides, padding)


def _conv_forward(x, kernel, strides, padding):
    return _plain(x, kernel, strides, padding), (x, kernel)


def _conv_backward(strides, padding, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _plain(x, kernel, strides, padding), x)
    grad_kernel = lax.platform_dependent(
        cpu=lambda: kernel_gradient(x, grad, kernel.shape, strides, padding).astype(kernel.dtype),
        default=lambda: jax.vjp(lambda kernel: _plain(x, kernel, strides, padding), kernel)[1](grad)[0],
    )
    return input_vjp(grad)[0], grad_kernel


_conv.defvjp(_conv_forward, _conv_backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` with the matmul kernel gradient above for plain NHWC/HWIO convolutions."""
    plain = (
        lhs.ndim == 4
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
        and all(d == 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
        and feature_group_count == 1 and batch_group_count == 1 and precision is None and preferred_element_type is None
    )
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


# `nn.Conv` with the matmul kernel gradient; parameters and outputs are nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
