"""Measurements on trained (or untrained) models."""
import torch

from .model import MixedAutoencoderViT


@torch.no_grad()
def cross_image_reliance(model: MixedAutoencoderViT, imgs: torch.Tensor, unrelated: torch.Tensor,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
    """How much each image's reconstruction loss rises when the other images of its mixed sequence are
    swapped for unrelated images, with the same partition (METHOD.md, the MI argument).

    imgs, unrelated [B, C, H, W]. Returns [B]: loss(swapped) - loss(original) for every image. Zero for
    MAE by construction (one image per sequence); positive where the encoder uses the other images.
    """
    G = model.config.group_size
    if unrelated.shape != imgs.shape:
        raise ValueError(f"unrelated images must have the batch's shape {tuple(imgs.shape)}, got {tuple(unrelated.shape)}")
    if noise is None:  # one partition (or MAE mask) for every pass, so only the neighbours change
        rows = imgs.shape[0] // G
        noise = torch.rand(rows, model.config.num_patches, device=imgs.device)
    base = model(imgs, noise=noise).loss_per_image
    rise = torch.empty_like(base)
    for slot in range(G):  # keep the images of one slot, replace every other slot's
        swapped = unrelated.clone()
        swapped[slot::G] = imgs[slot::G]
        rise[slot::G] = model(swapped, noise=noise).loss_per_image[slot::G] - base[slot::G]
    return rise
