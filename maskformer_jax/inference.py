"""Turning model outputs into segmentations. SPEC.md §4."""

import jax
import jax.numpy as jnp

from maskformer_jax.resize import resize_bilinear


def semantic_scores(class_logits, mask_logits, height: int, width: int):
    """Σ_q softmax(class_q)[:K] · sigmoid(mask_q), with mask logits bilinearly upsampled first.

    class_logits: [B, Q, K+1]; mask_logits: [B, Q, h, w] → [B, K, height, width] float32.
    The "no object" column is dropped after the softmax, without renormalising.
    """
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]
    masks = jax.nn.sigmoid(resize_bilinear(mask_logits.astype(jnp.float32), height, width))
    return jnp.einsum("bqk,bqhw->bkhw", probs, masks)
