"""Dense transfer, the paper's second metric (ADE20K segmentation, COCO detection), at this data's size: semantic
segmentation of scenes built from the dataset's own objects, with exact labels, scored as mIoU at the patch level.

A scene holds `objects` objects of different classes, shrunk and placed at random over clutter (fragments of other
images, labelled background), so that a patch's class cannot be read off the scene's class: the encoder has to
say which object each patch belongs to. The read-out is the paper's: the encoder fine-tuned end to end with a
linear head on its patch tokens (no [CLS]), `train_segmentation`; docs/METHOD.md §9 gives the pilot that chose it
over a head on frozen tokens.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from tqdm.auto import tqdm

from .data import TensorDataset, normalize
from .finetune import FinetuneRecipe
from .model import MaskedAutoencoderViT, timm_encoder
from .objects import foreground
from .train import autocast, lr_schedule

BACKGROUND = 0  # label 0: blank canvas and clutter; object classes are 1 + the dataset's label


def scenes(data: TensorDataset, n: int, generator: torch.Generator, objects: int = 2, object_size: int = 16,
           fragments: int = 4, fragment_size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """n scenes of the dataset's size from black-background images (Fashion-MNIST): `fragments` crops of other
    images (background), then `objects` images of distinct classes shrunk to object_size, drawn (object pixels
    only) at random positions, a later one over an earlier. Returns (uint8 images [n, C, H, W], pixel labels
    [n, H, W] int64: BACKGROUND, or 1 + the class of the object drawn last on that pixel)."""
    C, H, W = data.images.shape[1:]
    if objects > data.num_classes:
        raise ValueError(f"{objects} objects of different classes need {objects} classes, the data has "
                         f"{data.num_classes}")
    images, labels = data.images.cpu(), data.labels.cpu()
    out = torch.zeros(n, C, H, W, dtype=torch.uint8)
    target = torch.full((n, H, W), BACKGROUND, dtype=torch.int64)

    def pick(m):
        return torch.randint(0, len(images), (m,), generator=generator)

    def at(limit, m):
        return torch.randint(0, limit + 1, (m,), generator=generator).tolist()

    lo, hi = (H - fragment_size) // 4, (3 * (H - fragment_size)) // 4  # crops from the central half, as `cluttered`
    for _ in range(fragments):
        donors, ys, xs = pick(n).tolist(), at(hi - lo, n), at(hi - lo, n)
        ty, tx = at(H - fragment_size, n), at(W - fragment_size, n)
        for b in range(n):
            out[b, :, ty[b]:ty[b] + fragment_size, tx[b]:tx[b] + fragment_size] = \
                images[donors[b], :, lo + ys[b]:lo + ys[b] + fragment_size, lo + xs[b]:lo + xs[b] + fragment_size]
    classes = torch.stack([torch.randperm(data.num_classes, generator=generator)[:objects] for _ in range(n)])
    for o in range(objects):
        chosen = torch.stack([pick_of_class(labels, int(k), generator) for k in classes[:, o]])
        small = F.interpolate(images[chosen].float(), size=(object_size, object_size), mode="area").round() \
            .to(torch.uint8)
        drawn = foreground(small)
        oy, ox = at(H - object_size, n), at(W - object_size, n)
        for b in range(n):
            window = (slice(oy[b], oy[b] + object_size), slice(ox[b], ox[b] + object_size))
            out[b, :, window[0], window[1]][:, drawn[b]] = small[b][:, drawn[b]]
            target[b, window[0], window[1]][drawn[b]] = 1 + int(classes[b, o])
    return out, target


def pick_of_class(labels: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    idx = (labels == k).nonzero().squeeze(1)
    return idx[torch.randint(0, len(idx), (1,), generator=generator)].squeeze(0)


def patch_labels(pixel_labels: torch.Tensor, patch_size: int, num_labels: int) -> torch.Tensor:
    """Each patch's most frequent pixel label (ties: the lowest label). [n, H, W] -> [n, grid * grid]."""
    one_hot = F.one_hot(pixel_labels, num_labels).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(one_hot, patch_size).flatten(2).argmax(1)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_labels: int) -> float:
    """Mean over the labels present in `target` or `pred` of IoU = TP / (TP + FP + FN), over all items (ADE20K's
    mIoU: one confusion matrix for the whole test set)."""
    confusion = torch.bincount(target.flatten() * num_labels + pred.flatten(), minlength=num_labels ** 2)
    confusion = confusion.view(num_labels, num_labels).double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return (tp[union > 0] / union[union > 0]).mean().item()


def patch_pixels(images_uint8: torch.Tensor, dataset: str, patch_size: int) -> torch.Tensor:
    """Each patch's normalised pixels, every patch a row: the raw-pixel baseline. [n * N, C p p]."""
    x = normalize(images_uint8, dataset)
    return F.unfold(x, patch_size, stride=patch_size).transpose(1, 2).flatten(0, 1)


class SegmentationViT(nn.Module):
    """An encoder (timm ViT from `timm_encoder`) with a linear head on every patch token: [B, N, labels]."""

    def __init__(self, model: MaskedAutoencoderViT, num_labels: int):
        super().__init__()
        self.vit = timm_encoder(model)
        self.head = nn.Linear(model.config.embed_dim, num_labels).to(next(model.parameters()).device)

    def forward(self, x):
        return self.head(self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:])


def train_segmentation(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, targets: torch.Tensor, dataset: str,
                       recipe: FinetuneRecipe, num_labels: int, seed: int = 0, precision: str = "fp32",
                       progress: bool = False) -> SegmentationViT:
    """`SegmentationViT(model)` trained end to end on scenes with patch labels `targets` [n, N]: `recipe`'s layer decay,
    warm-up + cosine, AdamW and weight decay; flips only, which keep the patch grid; no drop path or label smoothing
    (the encoder is `timm_encoder`'s, the loss per patch). Eval mode."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    seg = SegmentationViT(model, num_labels).train()
    images_uint8, targets = images_uint8.to(device), targets.to(device)
    steps_per_epoch = len(images_uint8) // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images_uint8)} labelled scenes give no full batch of {recipe.batch_size}")
    lrs = lr_schedule(recipe.blr * recipe.batch_size / 256, 1e-6, recipe.epochs * steps_per_epoch,
                      recipe.warmup_epochs * steps_per_epoch)
    groups = param_groups_layer_decay(seg.vit, recipe.weight_decay, seg.vit.no_weight_decay(),
                                      layer_decay=recipe.layer_decay)
    groups += [{"params": [seg.head.weight], "weight_decay": recipe.weight_decay, "lr_scale": 1.0},
               {"params": [seg.head.bias], "weight_decay": 0.0, "lr_scale": 1.0}]
    opt = torch.optim.AdamW(groups, lr=float(lrs[0]), betas=(0.9, 0.999))
    g = torch.Generator(device).manual_seed(seed)
    grid = model.config.img_size // model.config.patch_size
    for step in tqdm(range(len(lrs)), disable=not progress, desc="segmentation", leave=False):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(images_uint8), generator=g, device=device)
        idx = order[(step % steps_per_epoch) * recipe.batch_size:][:recipe.batch_size]
        x, y = normalize(images_uint8[idx], dataset), targets[idx].view(-1, grid, grid)
        flip = torch.rand(len(idx), generator=g, device=device) < 0.5
        x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
        for group in opt.param_groups:
            group["lr"] = float(lrs[step]) * group["lr_scale"]
        with autocast(device, precision):
            loss = F.cross_entropy(seg(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return seg.eval()


@torch.no_grad()
def predict_patches(seg: SegmentationViT, images_uint8: torch.Tensor, dataset: str, batch_size: int = 500):
    device = next(seg.parameters()).device
    return torch.cat([seg(normalize(images_uint8[s:s + batch_size].to(device), dataset)).argmax(-1).cpu()
                      for s in range(0, len(images_uint8), batch_size)])
