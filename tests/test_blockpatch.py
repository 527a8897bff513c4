"""The ViT's patch embedding of a 2D Map from its blocks (annotate.blockpatch) against the
convolution over the rendered image."""

import numpy as np
import pytest
import torch

from annotate.blockpatch import block_embedding, forward_blocks, supports_blocks
from annotate.model import build_model
from annotate.render import RenderSettings, block_values, model_input

# float32 sums of the same products in another order: the tokens agree to a few 1e-6 of their scale
TOKEN_RTOL = 2e-5


def _spectra(n_pix: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    flux = rng.normal(1.0, 0.7, (6, n_pix)).astype(np.float32)
    flux[0, 100:160] = np.nan
    mask = rng.random((6, n_pix)) < 0.04
    return flux, mask


def _assert_same_outputs(model, flux, mask, settings):
    """Every output of the whole model from the blocks within float32 rounding of the image path's."""
    with torch.no_grad():
        image_out = model(model_input(flux, mask, settings))
        block_out = forward_blocks(model, block_values(flux, mask, settings), settings)
    for key in ("class_logits", "z_mean", "z_log_sigma", "stellar"):
        np.testing.assert_allclose(block_out[key].numpy(), image_out[key].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone, settings", [
    ("vit-micro", RenderSettings()),                                     # 32 px patches on 3 px blocks
    ("vit-tiny", RenderSettings()),                                      # 16 px patches
    ("vit-micro", RenderSettings(image_size=96, block_size=2, colormap="magma")),
    ("vit-micro", RenderSettings(image_size=128, block_size=4, normalise="none")),  # no border
])
def test_block_tokens_are_the_convolution_of_the_rendered_image(backbone, settings):
    torch.manual_seed(0)
    model = build_model(backbone, image_size=settings.image_size, pretrained=False).eval()
    assert supports_blocks(model, settings)
    flux, mask = _spectra(min(settings.capacity - 5, 4000))
    projection = model.backbone.embeddings.patch_embeddings.projection
    with torch.no_grad():
        expected = projection(model_input(flux, mask, settings)).flatten(2).transpose(1, 2)
        got = block_embedding(model, settings)(block_values(flux, mask, settings))
        assert got.shape == expected.shape
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= TOKEN_RTOL * scale
    _assert_same_outputs(model, flux, mask, settings)


def test_a_dinov2_backbone_gets_the_same_tokens_and_outputs():
    """DINOv2 interpolates its position embeddings to the input's size: the placeholder has the image's."""
    from transformers import Dinov2Config

    from annotate.model import SpectromerModel

    settings = RenderSettings()
    torch.manual_seed(2)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=224, num_channels=3)
    model = SpectromerModel(config).eval()
    assert supports_blocks(model, settings)
    _assert_same_outputs(model, *_spectra(4000), settings)


def test_the_backbone_keeps_its_own_patch_embedding_and_weights():
    settings = RenderSettings()
    torch.manual_seed(1)
    model = build_model("vit-micro", pretrained=False).eval()
    patches = model.backbone.embeddings.patch_embeddings
    keys = set(model.state_dict())
    flux, mask = _spectra(4000)
    with torch.no_grad():
        forward_blocks(model, block_values(flux, mask, settings), settings)
    assert model.backbone.embeddings.patch_embeddings is patches
    assert set(model.state_dict()) == keys
    # the kernels follow the weights: changed in place, the next call uses the new ones
    with torch.no_grad():
        patches.projection.weight.mul_(2.0)
        patches.projection.bias.zero_()
        expected = patches.projection(model_input(flux, mask, settings)).flatten(2).transpose(1, 2)
        got = block_embedding(model, settings)(block_values(flux, mask, settings))
    assert float((got - expected).abs().max()) <= TOKEN_RTOL * float(expected.abs().max())


def test_only_2d_maps_on_stride_equals_kernel_projections_qualify():
    model = build_model("vit-micro", pretrained=False)
    assert not supports_blocks(model, RenderSettings(encoding="simple"))
    assert not supports_blocks(model, RenderSettings(image_size=200))   # 200 px is no whole number of 32 px patches
    model.backbone.embeddings.patch_embeddings.projection = torch.nn.Conv2d(3, 32, 32, stride=16)
    assert not supports_blocks(model, RenderSettings())
    assert not supports_blocks(torch.nn.Linear(3, 3), RenderSettings())


def test_training_through_the_blocks_gives_the_images_loss_and_gradients():
    """The trainable path sums the kernels from the projection's weights in the step, so every
    parameter, the projection's included, gets the gradient it gets through the image."""
    settings = RenderSettings()
    torch.manual_seed(3)
    model = build_model("vit-micro", pretrained=False).train()
    flux, mask = _spectra(4000)
    target = torch.tensor([0, 1, 2, 0, 1, 2])

    def loss_and_grads(outputs):
        model.zero_grad()
        out = outputs()
        loss = torch.nn.functional.cross_entropy(out["class_logits"], target) + out["stellar"].pow(2).mean() \
            + out["z_log_sigma"].mean()
        loss.backward()
        return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    image_loss, image_grads = loss_and_grads(lambda: model(model_input(flux, mask, settings)))
    block_loss, block_grads = loss_and_grads(
        lambda: forward_blocks(model, block_values(flux, mask, settings), settings, trainable=True))
    assert block_loss == pytest.approx(image_loss, rel=1e-5)
    assert set(block_grads) == set(image_grads)
    assert "backbone.embeddings.patch_embeddings.projection.weight" in block_grads
    # each gradient to 0.1 % of its own scale; those that vanish in exact arithmetic (a key's bias
    # under softmax) are float32 noise of ~1e-10 either way, compared to 1e-6 of the largest
    largest = max(float(grad.abs().max()) for grad in image_grads.values())
    for name, grad in image_grads.items():
        tolerance = max(1e-3 * float(grad.abs().max()), 1e-6 * largest)
        assert float((block_grads[name] - grad).abs().max()) <= tolerance, name


def test_model_outputs_takes_blocks_or_pixels_as_the_batch_holds():
    from annotate.blockpatch import model_outputs

    settings = RenderSettings()
    torch.manual_seed(4)
    model = build_model("vit-micro", pretrained=False).eval()
    flux, mask = _spectra(4000)
    with torch.no_grad():
        from_pixels = model_outputs(model, {"pixels": model_input(flux, mask, settings)})
        from_blocks = model_outputs(model, {"blocks": block_values(flux, mask, settings)}, settings)
    np.testing.assert_allclose(from_blocks["class_logits"].numpy(), from_pixels["class_logits"].numpy(),
                               rtol=1e-4, atol=1e-5)
