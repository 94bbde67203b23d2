"""The losses of MixedAE: MAE's pixel reconstruction and the contrastive (SupCon) form of the homologous loss on
the final patch features. The attention form is computed by the attention itself (model.TopKAttention)."""
import torch
import torch.nn.functional as F


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], pixel order (p, q, c) inside a patch, patches row-major (as MAE)."""
    B, C, H, W = imgs.shape
    p = patch_size
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, patch_size: int, in_chans: int) -> torch.Tensor:
    """Inverse of `patchify` for square images."""
    B, N, _ = x.shape
    p, h = patch_size, int(N ** 0.5)
    x = x.reshape(B, h, h, p, p, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, in_chans, h * p, h * p)


def normalize_patches(target: torch.Tensor) -> torch.Tensor:
    """MAE's norm_pix_loss target: per-patch standardisation with the unbiased variance (torch default)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1.0e-6) ** 0.5


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """MAE's loss: per-patch MSE, averaged over hidden patches only (mask = 1 for hidden).

    Returns (loss, loss_per_image [B]): the second is each image's mean over its own hidden patches.
    """
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    loss = (per_patch * mask).sum() / mask.sum()
    loss_per_image = (per_patch * mask).sum(dim=1) / mask.sum(dim=1)
    return loss, loss_per_image


def homologous_contrastive_loss(z: torch.Tensor, src: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss within each mixed sequence (Khosla et al. 2020, L_out).

    z [E, N, d] L2-normalised patch projections, src [E, N] source slot of each patch. For anchor i:
    positives = other patches of the same source, denominator = every other patch of the sequence.
    """
    E, N, _ = z.shape
    logits = z @ z.transpose(1, 2) / temperature
    self_pair = torch.eye(N, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    log_prob = F.log_softmax(logits, dim=-1).masked_fill(self_pair, 0.0)
    positive = (src.unsqueeze(2) == src.unsqueeze(1)) & ~self_pair
    per_anchor = -(log_prob * positive).sum(-1) / positive.sum(-1).clamp(min=1)
    return per_anchor.mean()
