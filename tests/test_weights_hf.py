"""Parity with the Hugging Face PyTorch MaskFormer (random weights, built from config) and the
converter's error reporting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

from configs import ade20k_r50, ade20k_swin_t
from maskformer_jax.models import build_model
from maskformer_jax.weights.hf import variables_from_hf

STAGES = ["stage1", "stage2", "stage3", "stage4"]
HF_BACKBONES = {
    "r50": ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                        out_features=STAGES),
    "swin_t": SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                         drop_path_rate=0.3, out_features=STAGES),
}
OUR_CONFIGS = {"r50": ade20k_r50.get_config, "swin_t": ade20k_swin_t.get_config}


def hf_maskformer(backbone: str, num_labels: int = 150) -> MaskFormerForInstanceSegmentation:
    """A random-init HF model in eval mode, with norms, BN statistics and position tables randomised
    so that a wrong scale, shift, mean or variance mapping changes the outputs."""
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(
        MaskFormerConfig(backbone_config=HF_BACKBONES[backbone], num_labels=num_labels)
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if hasattr(module, "relative_position_bias_table"):
                module.relative_position_bias_table.normal_(0.0, 0.5)
    return model


def reference_outputs(model, images):
    """All decoder layers as the original MaskFormer computes them, from HF's modules.

    HF's intermediate decoder states skip the final LayerNorm that the original applies to every
    layer (and its list starts with the zero query input); its last state is already normalised.
    """
    with torch.no_grad():
        out = model(images, output_hidden_states=True)
        states = out.transformer_decoder_hidden_states
        assert len(states) == 7 and float(states[0].abs().max()) == 0.0
        norm = model.model.transformer_module.decoder.layernorm
        queries = torch.stack([norm(state) for state in states[1:6]] + [states[6]])
        pixel = out.pixel_decoder_last_hidden_state
        class_logits = model.class_predictor(queries)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", model.mask_embedder(queries), pixel)
    np.testing.assert_allclose(class_logits[-1], out.class_queries_logits, atol=1e-5)
    return class_logits.numpy(), mask_logits.numpy(), pixel.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module", params=["r50", "swin_t"])
def converted(request):
    model = hf_maskformer(request.param)
    config = OUR_CONFIGS[request.param]().model
    config.precision = "highest"  # full float32 matmuls on every backend (GPUs default to TF32)
    return request.param, model, config, variables_from_hf(model.state_dict(), config)


@pytest.mark.parametrize("height,width", [(128, 128), (96, 160)])
def test_converted_model_equals_hf_on_every_decoder_layer(converted, height, width):
    _, model, config, variables = converted
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height))
    class_ref, mask_ref, pixel_ref = reference_outputs(model, images)
    ours = jax.jit(build_model(config).apply)(variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
    assert ours["class_logits"].shape == (6, 2, 100, 151)
    assert ours["mask_logits"].shape == (6, 2, 100, height // 4, width // 4)
    np.testing.assert_allclose(ours["pixel_embeddings"], pixel_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["class_logits"], class_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["mask_logits"], mask_ref, atol=1e-4, rtol=0)
    # The comparison is not vacuous: logits are O(1) to O(10) and the layers differ from each other.
    assert np.abs(mask_ref).max() > 5 and np.abs(class_ref[0] - class_ref[-1]).max() > 0.1


def count_parameters(variables) -> int:
    """Trainable parameters plus frozen-BN scale and shift, as HF counts its BatchNorm weight and bias."""
    return sum(leaf.size for leaf in jax.tree.leaves(variables))


def test_parameter_count_equals_hf(converted):
    name, model, config, variables = converted
    hf_count = sum(p.numel() for p in model.parameters())
    if name == "swin_t":
        # HF's Swin keeps a final LayerNorm over res5 that no backbone output passes through.
        hf_count -= model.model.pixel_level_module.encoder.model.layernorm.weight.numel() * 2
    abstract = jax.eval_shape(build_model(config).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert count_parameters(abstract) == hf_count
    assert count_parameters(variables) == hf_count


def test_swin_state_dict_for_resnet_config_names_the_keys():
    model = hf_maskformer("swin_t")
    with pytest.raises(ValueError) as error:
        variables_from_hf(model.state_dict(), ade20k_r50.get_config().model)
    message = str(error.value)
    assert "missing from the Hugging Face state dict" in message
    assert "model.pixel_level_module.encoder.embedder.embedder.convolution.weight" in message
    assert "unexpected in the Hugging Face state dict" in message
    assert "model.pixel_level_module.encoder.model.embeddings.patch_embeddings.projection.weight" in message


def test_class_count_mismatch_names_the_key(converted):
    name, model, config, _ = converted
    state = dict(model.state_dict())
    state["class_predictor.weight"] = torch.zeros(101, 256)
    state["class_predictor.bias"] = torch.zeros(101)
    with pytest.raises(ValueError, match=r"class_predictor\.weight has 100 classes .*num_classes is 150"):
        variables_from_hf(state, config)


def test_misshaped_and_unknown_entries_are_named(converted):
    _, model, config, _ = converted
    state = dict(model.state_dict())
    key = "model.transformer_module.decoder.layers.3.mlp.fc1.weight"
    state[key] = torch.zeros(1024, 256)
    state["model.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as error:
        variables_from_hf(state, config)
    assert f"{key} (1024, 256)" in str(error.value)
    assert "query_decoder/layer3/ffn/linear1/kernel needs (256, 2048)" in str(error.value)
    assert "model.extra.weight" in str(error.value)
