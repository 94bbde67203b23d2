"""Pictures: the un-normalisation they rely on, and that each figure draws what it says."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from mixedae_core.config import make_config  # noqa: E402
from mixedae_core.data import make_synthetic, normalize  # noqa: E402
from mixedae_core.losses import normalize_patches, patchify  # noqa: E402
from mixedae_core.model import build_model  # noqa: E402
from mixedae_core.plots import (attention_maps_figure, reconstruction_figure, to_display,  # noqa: E402
                                topk_selection_figure, unnormalize_prediction)


def test_unnormalize_inverts_norm_pix_target():
    target = patchify(torch.rand(2, 3, 16, 16), 4)
    torch.testing.assert_close(unnormalize_prediction(normalize_patches(target), target), target, atol=1e-5, rtol=0)


def test_to_display_inverts_normalisation():
    raw = make_synthetic(4, img_size=16).images
    shown = to_display(normalize(raw, "synthetic"), "synthetic")
    torch.testing.assert_close(shown, raw.permute(0, 2, 3, 1).float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method,mode,rows", [("mae", "compose", 4), ("naive", "compose", 5), ("mixedae", "full", 5)])
def test_reconstruction_figure_rows(method, mode, rows):
    model = build_model(make_config("smoke", method=method, mix_mode=mode))
    images = normalize(make_synthetic(4, img_size=16).images, "synthetic")
    fig = reconstruction_figure(model, images, "synthetic")
    assert len(fig.axes) == 3 * rows  # one row per image, plus one mixed-input row per group
    assert ("un-normalised" in fig._suptitle.get_text()) == model.config.norm_pix_loss


def test_attention_and_topk_figures():
    model = build_model(make_config("smoke", method="mixedae"))
    images = normalize(make_synthetic(4, img_size=16).images, "synthetic")
    fig = attention_maps_figure(to_display(images, "synthetic"), {"a": torch.rand(4, 4, 4), "b": torch.rand(4, 4, 4)})
    assert len(fig.axes) == 4 * 3
    fig = topk_selection_figure(model, images, "synthetic")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="mixedae"):
        topk_selection_figure(build_model(make_config("smoke", method="naive")), images, "synthetic")
