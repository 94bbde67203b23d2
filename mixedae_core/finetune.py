"""Fine-tuning, the paper's first metric (ImageNet-1K top-1 after end-to-end fine-tuning), sized to this model.

MAE's recipe (`main_finetune.py`): the encoder as a stock timm ViT with **global average pooling** (a fresh
`fc_norm` and head, the pre-trained final norm dropped), every weight trained, AdamW with layer-wise lr decay,
warm-up + cosine per step, label smoothing, drop path; RandomResizedCrop + flip (no RandAugment, mixup or
cutmix: at a few epochs on a few thousand labels they cost more than they regularise). Every method is read out
the same way: no per-image [CLS] mask, no [CLS] read-out. A **low-label** split (`labelled_subset`), where
pre-training shows; docs/METHOD.md gives the pilot that chose its size.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from tqdm.auto import tqdm

from .data import TensorDataset, normalize, random_resized_crop_flip
from .evaluate import classifier_accuracy
from .model import MaskedAutoencoderViT, encoder_state_dict
from .train import autocast, lr_schedule

FRESH = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}  # what MAE's fine-tuning does not load


@dataclass(frozen=True)
class FinetuneRecipe:
    """MAE's fine-tuning recipe; the fields are those the pilot varied (docs/METHOD.md, "Fine-tuning")."""
    labels: int                       # labelled training images, class-balanced (`labelled_subset`)
    epochs: int
    blr: float = 1e-3                 # lr = blr x batch / 256, as MAE
    layer_decay: float = 0.75         # lr of block i = lr x decay^(depth - i), as MAE's ViT-B
    batch_size: int = 128
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    crop_scale: float = 0.2           # smallest area share of RandomResizedCrop (MAE's 0.08 is ImageNet's)


def labelled_subset(train: TensorDataset, n: int) -> TensorDataset:
    """n training images, n / classes of each class, one fixed draw for every run (so every encoder of a
    comparison fine-tunes on the same labels)."""
    per_class = n // train.num_classes
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(7))
    labels = train.labels.cpu()[order]
    picks = [order[labels == k][:per_class] for k in range(train.num_classes)]
    if any(len(p) < per_class for p in picks):
        raise ValueError(f"{n} labels need {per_class} images of every class; the training split has fewer")
    idx = torch.cat(picks).sort().values.to(train.images.device)
    return TensorDataset(train.images[idx], train.labels[idx], train.name, train.num_classes)


def pooled_vit(model: MaskedAutoencoderViT, num_classes: int, drop_path: float = 0.0) -> VisionTransformer:
    """The encoder as a stock timm ViT with global average pooling and a fresh head (MAE's fine-tuning model)."""
    c = model.config
    vit = VisionTransformer(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, embed_dim=c.embed_dim,
                            depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=True,
                            num_classes=num_classes, global_pool="avg", drop_path_rate=drop_path)
    state = {k: v for k, v in encoder_state_dict(model).items() if not k.startswith("norm.")}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if set(missing) != FRESH or unexpected:
        raise RuntimeError(f"the encoder does not fit timm's ViT: missing {missing}, unexpected {unexpected}")
    trunc_normal_(vit.head.weight, std=2e-5)  # MAE's head init
    return vit.to(next(model.parameters()).device)


def finetune(model: MaskedAutoencoderViT, train: TensorDataset, recipe: FinetuneRecipe, seed: int = 0,
             precision: str = "fp32", progress: bool = False) -> VisionTransformer:
    """`pooled_vit(model)` fine-tuned end to end on `labelled_subset(train, recipe.labels)`; in eval mode.
    `seed` draws the batches, crops and drop paths (the head's init too): the fine-tuning's own noise."""
    device = next(model.parameters()).device
    labelled = labelled_subset(train, recipe.labels).to(device)
    torch.manual_seed(seed)
    vit = pooled_vit(model, train.num_classes, recipe.drop_path).train()
    steps_per_epoch = len(labelled) // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(labelled)} labelled images give no full batch of {recipe.batch_size}")
    lrs = lr_schedule(recipe.blr * recipe.batch_size / 256, 1e-6, recipe.epochs * steps_per_epoch,
                      recipe.warmup_epochs * steps_per_epoch)
    groups = param_groups_layer_decay(vit, recipe.weight_decay, vit.no_weight_decay(),
                                      layer_decay=recipe.layer_decay)
    opt = torch.optim.AdamW(groups, lr=float(lrs[0]), betas=(0.9, 0.999))
    g = torch.Generator(device).manual_seed(seed)
    for step in tqdm(range(len(lrs)), disable=not progress, desc="fine-tuning", leave=False):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(labelled), generator=g, device=device)
        idx = order[(step % steps_per_epoch) * recipe.batch_size:][:recipe.batch_size]
        x = random_resized_crop_flip(normalize(labelled.images[idx], labelled.name), model.config.img_size, g,
                                     scale=(recipe.crop_scale, 1.0))
        for group in opt.param_groups:
            group["lr"] = float(lrs[step]) * group["lr_scale"]
        with autocast(device, precision):
            loss = F.cross_entropy(vit(x), labelled.labels[idx], label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return vit.eval()


def finetune_top1(model: MaskedAutoencoderViT, train: TensorDataset, test: TensorDataset, recipe: FinetuneRecipe,
                  seed: int = 0, precision: str = "fp32", progress: bool = False) -> float:
    """Top-1 on `test` after `finetune`."""
    return classifier_accuracy(finetune(model, train, recipe, seed, precision, progress), test)
