"""Pictures of what the models do: reconstructions, attention maps, TopK selections."""
import matplotlib.pyplot as plt
import torch

from .data import NORMALIZATION
from .losses import patchify, unpatchify
from .model import MaskedAutoencoderViT


def to_display(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """Normalised [B, C, H, W] -> [B, H, W, C] in [0, 1] for imshow."""
    mean, std = NORMALIZATION[dataset]
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def unnormalize_prediction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Undo norm_pix_loss with the *target* patches' own mean and variance (as MAE's demo does)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred * (var + 1.0e-6) ** 0.5 + mean


def _show(ax, image, title=None):
    image = image.detach().cpu().numpy()
    ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _patch_mask_image(mask: torch.Tensor, patch_size: int, in_chans: int) -> torch.Tensor:
    """[B, N] patch mask -> [B, C, H, W] pixel mask."""
    return unpatchify(mask.unsqueeze(-1).repeat(1, 1, patch_size ** 2 * in_chans), patch_size, in_chans)


@torch.no_grad()
def reconstruction_figure(model: MaskedAutoencoderViT, images: torch.Tensor, dataset: str, noise=None):
    """One row per image: original, what that image's encoder sequence showed of it, the reconstruction
    (visible patches pasted back). For mixed methods each group starts with a row for the mixed input.
    norm_pix_loss predictions are shown after un-normalising with the target patches' statistics."""
    model.eval()
    c = model.config
    out = model(images, noise=noise)
    target = patchify(images, c.patch_size)
    pred = unnormalize_prediction(out.pred, target) if c.norm_pix_loss else out.pred
    hidden = _patch_mask_image(out.mask, c.patch_size, c.in_chans)
    recon = unpatchify(pred, c.patch_size, c.in_chans) * hidden + images * (1 - hidden)
    visible = images * (1 - hidden) + images.amin() * hidden  # hidden patches dark
    rows = []
    G = model.switches.group_size
    for b in range(len(images)):
        if model.mixes and b % G == 0:
            seq = out.seq_of_image[b]
            first = (b // G) * G
            mixed = target[first + out.src[seq], torch.arange(c.num_patches)]  # the sequence the encoder saw
            rows.append(("mixed input" + (" (seq of image %d)" % b if c.mix_mode == "full" else ""),
                         unpatchify(mixed[None], c.patch_size, c.in_chans)[0]))
        rows.append((f"image {b}", (images[b], visible[b], recon[b])))
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.5, 1.5 * len(rows)), squeeze=False)
    for ax_row, (label, content) in zip(axes, rows):
        if isinstance(content, tuple):
            for ax, img, title in zip(ax_row, content, ("original", "visible to it", "reconstruction")):
                _show(ax, to_display(img[None], dataset)[0], title if ax_row is axes[0] or model.mixes else None)
            ax_row[0].set_ylabel(label, fontsize=8)
        else:
            _show(ax_row[0], to_display(content[None], dataset)[0], label)
            ax_row[1].axis("off")
            ax_row[2].axis("off")
    caption = "reconstructions un-normalised with each target patch's mean and variance" if c.norm_pix_loss else ""
    fig.suptitle(f"{c.method}" + (f" ({c.mix_mode})" if model.mixes else "") + (f"\n{caption}" if caption else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def attention_maps_figure(images_display: torch.Tensor, maps: dict, title: str = ""):
    """images_display [B, H, W, C] in [0, 1]; maps {model name: [B, grid, grid]} head-averaged [CLS]
    attention. One row per image, one column per model, the map upsampled over the image."""
    names = list(maps)
    B = images_display.shape[0]
    fig, axes = plt.subplots(B, 1 + len(names), figsize=(1.6 * (1 + len(names)), 1.6 * B), squeeze=False)
    H = images_display.shape[1]
    for i in range(B):
        _show(axes[i, 0], images_display[i], "image" if i == 0 else None)
        for j, name in enumerate(names):
            m = maps[name][i].float()
            up = torch.nn.functional.interpolate(m[None, None], size=(H, H), mode="nearest")[0, 0]
            _show(axes[i, j + 1], images_display[i], name if i == 0 else None)
            axes[i, j + 1].imshow(up.cpu().numpy(), cmap="inferno", alpha=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def topk_selection_figure(model: MaskedAutoencoderViT, images: torch.Tensor, dataset: str, layer: int = 0,
                          query: int | None = None, noise=None):
    """For MixedAE on one mixed sequence: the source of every position, and which keys a patch query
    keeps in its TopK (head-averaged share of heads keeping each key), per source image."""
    c = model.config
    if c.method != "mixedae":
        raise ValueError("TopK selections exist for method='mixedae' only")
    model.eval()
    G = model.switches.group_size
    out = model(images[:G], noise=noise, return_attention=True)
    grid = int(c.num_patches ** 0.5)
    src = out.src[0].view(grid, grid).cpu()
    query = int(torch.arange(c.num_patches)[out.src[0].cpu() == 0][0]) if query is None else query
    attn = out.attentions[layer][0]  # [H, T, T]
    n_cls = model.switches.n_cls
    kept = (attn[:, n_cls + query, n_cls:] > 0).float().mean(0).view(grid, grid).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    axes[0].imshow(src.numpy(), cmap="tab10", vmin=0, vmax=9)
    axes[0].set_title("source image of each position", fontsize=8)
    axes[1].imshow(kept.numpy(), cmap="viridis", vmin=0, vmax=1)
    same = (out.src[0].cpu() == out.src[0, query].cpu()).view(grid, grid)
    for y in range(grid):
        for x in range(grid):
            if same[y, x]:
                axes[1].text(x, y, "•", ha="center", va="center", color="white", fontsize=7)
    qy, qx = divmod(query, grid)
    for ax in axes:
        ax.plot(qx, qy, marker="s", markersize=9, markerfacecolor="none", markeredgecolor="red")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].set_title(f"keys kept by the query (red), block {layer}\n(share of heads; • = same image)", fontsize=8)
    fig.tight_layout()
    return fig
