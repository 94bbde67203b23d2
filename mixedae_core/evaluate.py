"""Evaluation of a pre-trained encoder: frozen features (kNN, linear probe), attention maps and object awareness,
and the diagnostics of the ablations (cross-image reliance). The paper's metrics (fine-tuning, dense transfer) are
transfer.py's.

Features come from the encoder on whole, unmixed images (`forward_features`: global attention among the patches,
the [CLS] attention structure of pre-training): what `timm_encoder`'s ViT computes. Two features per image: the [CLS] token and
the mean of the patch tokens, both after the final norm.
"""
import dataclasses

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Attention, VisionTransformer
from tqdm.auto import tqdm

from .config import Config, EvalConfig, ModelConfig
from .data import TensorDataset, dataset_of, epoch_order, normalize, random_resized_crop_flip
from .mixing import draw_partition
from .switches import mixing_group_size
from .losses import normalize_patches, patchify, reconstruction_loss
from .model import ENCODER_PREFIXES, MaskedAutoencoderViT, MixedAutoencoderViT, build_model, timm_encoder
from .objects import (OBJECT_MASK_DATASETS, VARIANTS, cluttered, map_baseline_scores, map_object_iou, object_variants,
                      score_name)
from .train import autocast, lr_schedule, make_optimizer


# ------------------------------------------------------------------------------------------ features
@torch.no_grad()
def extract_features(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, dataset: str, batch_size: int = 500,
                     progress: bool = False) -> dict:
    """{'cls': [n, D], 'mean': [n, D]} for uint8 images, normalised like training, no augmentation."""
    model.eval()
    device = next(model.parameters()).device
    cls, mean = [], []
    for start in tqdm(range(0, len(images_uint8), batch_size), disable=not progress, desc="features", leave=False):
        x = normalize(images_uint8[start:start + batch_size].to(device), dataset)
        tokens = model.forward_features(x).float()
        cls.append(tokens[:, 0])
        mean.append(tokens[:, 1:].mean(1))
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


def pixel_features(images_uint8: torch.Tensor, dataset: str) -> torch.Tensor:
    return normalize(images_uint8, dataset).flatten(1)


# ------------------------------------------------------------------------------------------ kNN, probe
@torch.no_grad()
def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, chunk: int = 1024) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018, as DINO): each of the k nearest training
    features votes for its class with weight exp(similarity / temperature)."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    train_x = F.normalize(train_x.float(), dim=1)
    correct = 0
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sims, idx = (q @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += (votes.argmax(1) == test_y[start:start + chunk]).sum().item()
    return correct / len(test_x)


def fit_linear_probe(train_x, train_y, l2: float = 1e-4, max_iter: int = 300, num_classes: int | None = None):
    """Multinomial logistic regression on standardised features, full-batch L-BFGS to convergence. Returns
    `predict(x) -> class indices`."""
    num_classes = num_classes or int(train_y.max()) + 1
    train_x = train_x.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x = (train_x - mean) / std
    linear = torch.nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.no_grad()(lambda x: linear((x.float() - mean) / std).argmax(1))


def linear_probe_accuracy(train_x, train_y, test_x, test_y, l2: float = 1e-4, max_iter: int = 300,
                          num_classes: int | None = None) -> float:
    """Test accuracy of `fit_linear_probe`."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    predict = fit_linear_probe(train_x, train_y, l2, max_iter, num_classes)
    return (predict(test_x) == test_y).float().mean().item()


def frozen_scores(train_feats: dict, train_y, test_feats: dict, test_y, ec: EvalConfig, num_classes: int) -> dict:
    """kNN and linear-probe accuracy for every feature kind ('cls', 'mean', 'pixels', ...)."""
    out = {}
    for kind in train_feats:
        out[f"knn_{kind}"] = knn_accuracy(train_feats[kind], train_y, test_feats[kind], test_y, ec.knn_k,
                                          ec.knn_temperature, num_classes)
        out[f"probe_{kind}"] = linear_probe_accuracy(train_feats[kind], train_y, test_feats[kind], test_y,
                                                     ec.probe_l2, ec.probe_max_iter, num_classes)
    return out


# ------------------------------------------------------------------------------------------ attention
@torch.no_grad()
def attention_map(model: MaskedAutoencoderViT, images: torch.Tensor, layer: int = -1,
                  query: int | None = None) -> torch.Tensor:
    """Attention of one encoder block on single images (global attention), from the [CLS] query
    (query=None) or from patch `query` (row-major index), to every patch: [B, heads, grid, grid]."""
    model.eval()
    _, attentions = model.forward_features(images, return_attention=True)
    attn = attentions[layer][:, :, 0 if query is None else 1 + query, 1:]
    grid = int(attn.shape[-1] ** 0.5)
    return attn.reshape(*attn.shape[:2], grid, grid)


@torch.no_grad()
def cls_self_attention(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, dataset: str,
                       batch_size: int = 500) -> list[float]:
    """Per encoder block, the share of the [CLS] query's attention on its own key (mean over images and heads):
    near 1, the [CLS] no longer reads the image in that block."""
    model.eval()
    device, sums = next(model.parameters()).device, None
    for start in range(0, len(images_uint8), batch_size):
        raw = images_uint8[start:start + batch_size].to(device)
        _, attentions = model.forward_features(normalize(raw, dataset), return_attention=True)
        batch = torch.stack([a[:, :, 0, 0].float().mean(1).sum() for a in attentions])
        sums = batch if sums is None else sums + batch
    return (sums / len(images_uint8)).tolist()


def own_image_attention(probs: torch.Tensor, src: torch.Tensor, n_cls: int = 1) -> torch.Tensor:
    """Share of each patch query's attention over the other patch keys that falls on its own image's patches,
    averaged over queries, heads and sequences. The query's own key is left out (attending to itself is not
    grouping), so uniform attention scores (rN - 1) / (N - 1): `grouping_chance`.
    probs [E, H, T, T] with `n_cls` leading [CLS] tokens; src [E, N] the source slot of every patch."""
    N = src.shape[1]
    others = ~torch.eye(N, dtype=torch.bool, device=src.device)
    own = ((src.unsqueeze(2) == src.unsqueeze(1)) & others).unsqueeze(1)  # [E, 1, N, N]
    patch = probs[:, :, n_cls:, n_cls:].float()
    return ((patch * own).sum(-1) / (patch * others).sum(-1).clamp(min=1e-30)).mean()


def grouping_chance(config: ModelConfig) -> float:
    rN = config.num_patches // mixing_group_size(config)
    return (rN - 1) / (config.num_patches - 1)


@torch.no_grad()
def mixed_grouping(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, dataset: str, noise: torch.Tensor,
                   segments: bool = False) -> list[float]:
    """Per encoder block, `own_image_attention` when the images, in consecutive groups of G = 1/mix_ratio, are
    mixed as in compose pre-training, with the model's [CLS] structure (one per image, read by no patch, for the
    mixing methods' per-image [CLS]; one shared [CLS] for MAE's) and global attention among the patches for every
    method: no TopK and, unless `segments`, no segment embedding. Does an encoder group patches by their content?
    A model that learned to follow the segment embedding scores 1 with `segments` for that reason alone (a
    positive control). noise [B/G, N]: the partition noise, the same for every model compared."""
    model.eval()
    mixing_model = MixedAutoencoderViT.holding(model, "compose")
    imgs = normalize(images_uint8.to(noise.device), dataset)
    _, mixing, extras = mixing_model.forward_mixed_encoder(imgs, noise, return_attention=True, homologous=False,
                                                           segments=segments)
    return [own_image_attention(e.probs, mixing.src, mixing.n_cls).item() for e in extras]


@torch.no_grad()
def cls_maps(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, dataset: str, layer: int = -1,
             batch_size: int = 500) -> torch.Tensor:
    """The head-averaged [CLS] attention of block `layer` on single images, at the images' size: [B, grid, grid]
    on the CPU."""
    if images_uint8.shape[-1] != model.config.img_size:
        model = at_image_size(model, images_uint8.shape[-1])
    device = next(model.parameters()).device
    return torch.cat([attention_map(model, normalize(images_uint8[start:start + batch_size].to(device), dataset),
                                    layer).mean(1).cpu() for start in range(0, len(images_uint8), batch_size)])


def object_awareness(model: MaskedAutoencoderViT, images_uint8: torch.Tensor, objects: torch.Tensor, dataset: str,
                     layer: int = -1, mass: float = 0.6, batch_size: int = 500) -> torch.Tensor:
    """Per-image IoU between the head-averaged [CLS] attention region (holding `mass` of the attention) and the
    object patches `objects` [B, grid, grid] (see objects.py), at the images' size."""
    return map_object_iou(cls_maps(model, images_uint8, dataset, layer, batch_size), objects, mass)


def at_image_size(model: MaskedAutoencoderViT, img_size: int) -> MaskedAutoencoderViT:
    """The model's encoder for img_size x img_size inputs: the same weights, the position embedding
    resampled to the new grid as timm resamples a ViT's (bicubic, [CLS] row kept)."""
    c = model.config
    model_fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(ModelConfig)}
    resized = build_model(ModelConfig(**{**model_fields, "img_size": img_size})).to(next(model.parameters()).device)
    grid = img_size // c.patch_size
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("pos_embed", "decoder_pos_embed"))}
    resized.load_state_dict(state, strict=False)
    old = c.img_size // c.patch_size
    with torch.no_grad():
        for name in ("pos_embed", "decoder_pos_embed"):
            getattr(resized, name).copy_(resample_abs_pos_embed(getattr(model, name), (grid, grid), (old, old),
                                                                num_prefix_tokens=1))
    return resized.eval()


# ------------------------------------------------------------------------------------------ the MI proxies
@torch.no_grad()
def shared_position_loss(model: MaskedAutoencoderViT, imgs: torch.Tensor, partition_noise: torch.Tensor,
                         group_size: int = 4, mix_mode: str = "compose"):
    """Reconstruction loss of each image when every method hides the same positions: the partition drawn
    from `partition_noise` [B/G, N] shows image b the positions it gets in its own sequence under
    `mix_mode` (compose: set b mod G; full: set 2b mod G); MAE is shown exactly those positions. So MAE
    and the mixing methods are compared on one pretext. Returns the model output (loss_per_image, mask)."""
    c = model.config
    s = model.switches
    if model.mixes:
        if (s.group_size, s.mix_mode) != (group_size, mix_mode):
            raise ValueError(f"the model mixes G = {s.group_size} images in {s.mix_mode} mode; "
                             f"asked for G = {group_size} in {mix_mode} mode")
        return model(imgs, noise=partition_noise)
    B, N = imgs.shape[0], c.num_patches
    sets = draw_partition(B // group_size, N, group_size, partition_noise)
    slot = torch.arange(B, device=imgs.device) % group_size
    own_set = slot if mix_mode == "compose" else (2 * slot) % group_size  # see mixing.mix_tokens
    hidden = sets[torch.arange(B, device=imgs.device) // group_size] != own_set.unsqueeze(1)
    # argsort keeps the lowest noise: the image's own set (0) before the rest (1), in position order;
    # the ratio keeps exactly N/G positions (int() of N * (1 - ratio) would round 1/3 down)
    order = torch.arange(N, device=imgs.device) / (2 * N)
    return model(imgs, mask_ratio=1 - (N // group_size + 0.5) / N, noise=hidden.float() + order)


@torch.no_grad()
def content_floor(model: MaskedAutoencoderViT, imgs: torch.Tensor, partition_noise: torch.Tensor,
                  group_size: int = 4, mix_mode: str = "compose") -> torch.Tensor:
    """The loss a model scores without looking: its prediction from blank images (zeros after normalisation,
    the dataset's mean colour) on the same hidden positions as `shared_position_loss`, against the real
    images' targets. [B] per image. A model whose loss does not fall below this floor ignores its input."""
    blank = shared_position_loss(model, torch.zeros_like(imgs), partition_noise, group_size, mix_mode)
    target = patchify(imgs, model.config.patch_size)
    if model.config.norm_pix_loss:
        target = normalize_patches(target)
    return reconstruction_loss(blank.pred.float(), target, blank.mask)[1]


# Layouts of a group around an anchor image in slot 0, from unrelated to fully dependent neighbours.
DEPENDENCE_LAYOUTS = ("random", "class", "views", "same_image")


def dependence_layouts(images: torch.Tensor, labels: torch.Tensor, m: int, group_size: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Anchors and their G - 1 neighbours per layout, from normalised images [n, C, H, W] and labels:
    unrelated and random (two disjoint random draws), class (other images of the anchor's class), views
    (the anchor under G - 1 random resized crops and flips, MAE's augmentation) and same_image (the anchor
    itself, so the group's union shows the whole image). Needs n >= m * (2G - 1)."""
    k = group_size - 1
    if len(images) < m * (1 + 2 * k):
        raise ValueError(f"{m} anchors with G = {group_size} need {m * (1 + 2 * k)} images, got {len(images)}")
    order = torch.randperm(len(images), generator=generator)
    anchor_idx, pool = order[:m], order[m:]
    anchors = images[anchor_idx]
    shape = (m, k, *images.shape[1:])
    neighbours = {"unrelated": images[pool[:m * k]].view(shape), "random": images[pool[m * k:2 * m * k]].view(shape)}
    same_class = []
    for i in anchor_idx.tolist():  # other images of the anchor's class, never an anchor
        candidates = pool[labels[pool] == labels[i]]
        if len(candidates) < k:
            raise ValueError(f"class {int(labels[i])} has {len(candidates)} images besides the anchors; "
                             f"the class layout needs {k} per anchor: use more images")
        same_class.append(candidates[torch.randperm(len(candidates), generator=generator)[:k]])
    neighbours["class"] = images[torch.stack(same_class)]
    size = images.shape[-1]
    crops = random_resized_crop_flip(anchors.repeat_interleave(k, 0), size, generator)
    neighbours["views"] = crops.view(shape)
    neighbours["same_image"] = anchors.unsqueeze(1).expand(shape).clone()
    return anchors, neighbours


@torch.no_grad()
def dependence_scores(model: MaskedAutoencoderViT, anchors: torch.Tensor, neighbours: dict[str, torch.Tensor],
                      partition_noise: torch.Tensor, group_size: int = 4, mix_mode: str = "compose") -> dict:
    """The mutual-information dose-response (docs/METHOD.md, section 7): each anchor image sits in slot 0 of a
    group whose other G - 1 slots hold its neighbours of one layout; the anchor's hidden positions are the
    same in every layout, so only the neighbours change.

    anchors [m, C, H, W]; neighbours {layout: [m, G - 1, C, H, W]}, with 'unrelated' (the reference) and
    any of DEPENDENCE_LAYOUTS. Per layout: `loss` (the anchors' mean loss), `reliance` (loss - the loss
    with unrelated neighbours: negative where the neighbours help); the anchors' content floor `floor`; and,
    from 'random' against 'unrelated' (two draws of one distribution, so a signed reliance is zero in
    expectation), the `sensitivity` that cannot cancel: mean |loss change| and `pred_change`, the relative
    change of the anchors' predictions on their hidden positions. MAE's anchors see no neighbour: zero.
    """
    G = group_size

    def grouped(layout):
        return torch.cat([anchors.unsqueeze(1), neighbours[layout]], 1).flatten(0, 1)  # anchor at slot 0

    def anchor_out(layout):
        out = shared_position_loss(model, grouped(layout), partition_noise, G, mix_mode)
        return out.loss_per_image[0::G], out.pred[0::G].float(), out.mask[0::G]

    ref_loss, ref_pred, mask = anchor_out("unrelated")
    scores = {"floor": content_floor(model, grouped("unrelated"), partition_noise, G, mix_mode)[0::G].mean().item()}
    for layout in (l for l in DEPENDENCE_LAYOUTS if l in neighbours):
        loss, pred, _ = anchor_out(layout)
        scores[f"loss_{layout}"] = loss.mean().item()
        scores[f"reliance_{layout}"] = (loss - ref_loss).mean().item()
        if layout == "random":
            hidden = mask.unsqueeze(-1)
            scores["sensitivity"] = (loss - ref_loss).abs().mean().item()
            scores["pred_change"] = ((pred - ref_pred) * hidden).norm().item() / max((ref_pred * hidden).norm().item(), 1e-12)
    return scores


# ------------------------------------------------------------------------------------------ supervised training
def train_classifier(model: MaskedAutoencoderViT, train: TensorDataset, epochs: int = 10, batch_size: int = 256,
                     blr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0, precision: str = "bf16",
                     augment: bool = True, progress: bool = False, cls_targets: torch.Tensor | None = None,
                     cls_target_weight: float = 0.0) -> VisionTransformer:
    """The encoder as a timm ViT (`timm_encoder`) with a linear head on [CLS], trained end to end with labels:
    AdamW with one warm-up epoch + cosine, RandomResizedCrop + flip when `augment`. With `cls_targets` ([N, patches],
    each row a distribution over the patches of image N), `cls_target_weight` times the cross-entropy from them to
    the last block's head-averaged [CLS] attention is added to the loss. Returns the ViT (eval mode)."""
    device = next(model.parameters()).device
    vit = timm_encoder(model)
    vit.reset_classifier(train.num_classes)
    vit.to(device).train()
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training images give no full batch of {batch_size}")
    if cls_targets is not None and augment:
        raise ValueError("cls_targets are per patch of the images as given: they do not follow random crops")
    lrs = lr_schedule(blr * batch_size / 256, 0.0, epochs * steps_per_epoch, steps_per_epoch)
    opt = make_optimizer(vit, float(lrs[0]), weight_decay, betas=(0.9, 0.999))
    last_attention_input = []
    hook = vit.blocks[-1].attn.register_forward_hook(lambda _m, args, _out: last_attention_input.append(args[0]))
    g = torch.Generator(device).manual_seed(seed)
    step = 0
    for _ in tqdm(range(epochs), disable=not progress, desc="supervised training"):
        order = torch.randperm(len(train), generator=g, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = normalize(train.images[idx].to(device), train.name)
            if augment:
                x = random_resized_crop_flip(x, model.config.img_size, g)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            last_attention_input.clear()
            with autocast(device, precision):
                loss = F.cross_entropy(vit(x), train.labels[idx].to(device))
                if cls_targets is not None:
                    attention = cls_attention(vit.blocks[-1].attn, last_attention_input[0])[:, 1:]
                    target = cls_targets[idx.to(cls_targets.device)].to(device)
                    loss = loss - cls_target_weight * (target * attention.clamp_min(1e-8).log()).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    hook.remove()
    return vit.eval()


def cls_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The head-averaged attention [B, T] of the first token ([CLS]) of `x` (the input of timm's `attn`) over all
    tokens, as `attn` computes it, with its gradient (timm's fused attention returns no probabilities)."""
    B, T, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)
    return logits.float().softmax(-1).mean(1).squeeze(1)


@torch.no_grad()
def classifier_accuracy(vit: VisionTransformer, test: TensorDataset, batch_size: int = 500) -> float:
    device = next(vit.parameters()).device
    correct = 0
    for start in range(0, len(test), batch_size):
        x = normalize(test.images[start:start + batch_size].to(device), test.name)
        correct += (vit(x).argmax(1).cpu() == test.labels[start:start + batch_size].cpu()).sum().item()
    return correct / len(test)


# ------------------------------------------------------------------------------------------ whole models
def eval_splits(config: Config, ec: EvalConfig) -> tuple[TensorDataset, TensorDataset]:
    """(training images, test images) of an evaluation, `ec.train_subset` and `ec.test_subset` of them."""
    return dataset_of(config, "train", ec.train_subset), dataset_of(config, "test", ec.test_subset)


def evaluate_model(model: MaskedAutoencoderViT, config: Config, ec: EvalConfig, progress: bool = False,
                   pretext: bool = True) -> dict:
    """kNN and linear probe on [CLS] and mean-pooled features, the object-awareness IoU and, with
    `pretext`, the pretext measurements of `pretext_scores`."""
    device = next(model.parameters()).device
    train, test = eval_splits(config, ec)
    train_y, test_y = train.labels.to(device), test.labels.to(device)
    tr = extract_features(model, train.images, train.name, ec.batch_size, progress)
    te = extract_features(model, test.images, test.name, ec.batch_size, progress)
    scores = frozen_scores(tr, train_y, te, test_y, ec, train.num_classes)
    awareness = object_scores(model, test, ec)
    awareness["cls_self_attention"] = cls_self_attention(model, test.images, test.name, ec.batch_size)
    extra = pretext_scores(model, config, test, ec.pretext_images) if pretext else {}
    return {**scores, **awareness, **extra, "train_images": len(train), "test_images": len(test)}


def object_scores(model: MaskedAutoencoderViT, test: TensorDataset, ec: EvalConfig) -> dict:
    """{score_name(variant): mean object IoU} over the test variants of `object_variants` (None where the
    dataset has no object masks)."""
    if test.name not in OBJECT_MASK_DATASETS:
        return {score_name(v): None for v in VARIANTS}
    return {score_name(v): object_awareness(model, images, objects, test.name, ec.attention_layer, ec.attention_mass,
                                            ec.batch_size).mean().item()
            for v, (images, objects) in object_variants(test.images, model.config.patch_size).items()}


def pretext_inputs(config: Config, test: TensorDataset, n_images: int):
    """(uint8 images, labels, partition noise) of the pretext measurements: n_images test images (whole groups of
    G), a fixed choice and noise that every run of every method shares."""
    G, N = mixing_group_size(config), config.num_patches  # the mixing methods' G; MAE sees the same groups
    n = min(n_images, len(test)) // G * G
    if n == 0:
        raise ValueError(f"pretext scores need at least G = {G} test images, the test split has {len(test)}")
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:n]
    noise = torch.rand(n // G, N, generator=torch.Generator().manual_seed(0))
    return test.images[pick], test.labels[pick], noise


@torch.no_grad()
def content_scores(model: MaskedAutoencoderViT, config: Config, images_uint8: torch.Tensor, noise: torch.Tensor,
                   dataset: str) -> dict:
    """{shared_loss, floor}: the loss on identical hidden positions and the model's content-blind floor on them
    (their ratio is `content_ratio`), for uint8 images in groups of G (a last partial group is left out)."""
    device = next(model.parameters()).device
    G = mixing_group_size(config)
    m = len(images_uint8) // G * G
    x, nz = normalize(images_uint8[:m].to(device), dataset), noise[:m // G].to(device)
    loss = shared_position_loss(model, x, nz, G, config.mix_mode).loss_per_image.mean().item()
    floor = content_floor(model, x, nz, G, config.mix_mode).mean().item()
    return {"shared_loss": loss, "floor": floor}


def content_ratio(scores: dict, layout: str = "random") -> float:
    """Loss on identical hidden positions over the content floor (`content_scores`): 1 when the prediction
    ignores the image, lower the more the image is used."""
    return scores[f"shared_loss_{layout}"] / scores[f"floor_{layout}"]


@torch.no_grad()
def pretext_scores(model: MaskedAutoencoderViT, config: Config, test: TensorDataset, n_images: int) -> dict:
    """The pretext measurements of the MI argument, on fixed test images (the same for every run).

    shared_loss_{random,class}, floor_{random,class}: `content_scores` with the
    images laid out as random or same-class groups of G. dose_*: the dose-response of `dependence_scores` over
    DEPENDENCE_LAYOUTS (dose_loss_<layout>, dose_reliance_<layout>, dose_floor, dose_sensitivity,
    dose_pred_change), with about n_images / G anchors."""
    device = next(model.parameters()).device
    G, N = mixing_group_size(config), config.num_patches
    images, labels, noise = pretext_inputs(config, test, n_images)
    layouts = {"random": torch.arange(len(images)),
               "class": epoch_order(labels, G, G, "class", torch.Generator().manual_seed(0))}
    scores = {}
    for layout, order in layouts.items():  # same-class groups can leave a few images out
        layout_scores = content_scores(model, config, images[order], noise, test.name)
        scores.update({f"{k}_{layout}": v for k, v in layout_scores.items()})
    anchors_n = min(len(images) // G, len(test) // (2 * G - 1))
    g = torch.Generator().manual_seed(2)
    anchors, neighbours = dependence_layouts(normalize(test.images.to(device), test.name), test.labels.to(device),
                                             anchors_n, G, g)
    dose_noise = torch.rand(anchors_n, N, generator=torch.Generator().manual_seed(3)).to(device)
    dose = dependence_scores(model, anchors, neighbours, dose_noise, G, config.mix_mode)
    return {**scores, **{f"dose_{k}": v for k, v in dose.items()}}


class LearningCurveProbe:
    """`train()`'s probe: at the end of the epochs in `epochs`, the frozen-feature scores of `frozen_scores` and the
    content ratio on identical hidden positions (random groups), with the recipe and images of the final
    evaluation, so a curve's points and its end are one measurement. The images are read at the first point."""

    def __init__(self, config: Config, ec: EvalConfig, epochs):
        self.config, self.ec, self.epochs = config, ec, tuple(epochs)
        self.data = None

    def __call__(self, model: MaskedAutoencoderViT, epochs_done: int) -> dict | None:
        if epochs_done not in self.epochs:
            return None
        device = next(model.parameters()).device
        if self.data is None:
            train, test = eval_splits(self.config, self.ec)
            self.data = train, test, pretext_inputs(self.config, test, self.ec.pretext_images)
        train, test, (images, _, noise) = self.data
        tr = extract_features(model, train.images, train.name, self.ec.batch_size)
        te = extract_features(model, test.images, test.name, self.ec.batch_size)
        scores = frozen_scores(tr, train.labels.to(device), te, test.labels.to(device), self.ec, train.num_classes)
        content = content_scores(model, self.config, images, noise, test.name)
        return {**scores, **{f"{k}_random": v for k, v in content.items()}}


def mae_twin(config: Config) -> Config:
    """The same sizes, data and seed as plain MAE: its random init is every method's shared init."""
    return config.without_mixing()


def random_init_encoder(config: Config, device) -> MaskedAutoencoderViT:
    """The shared initialisation of every method of `config`'s seed, untrained: a baseline for every measure."""
    torch.manual_seed(config.seed)
    return build_model(mae_twin(config)).to(device).eval()


CONTROL = "supervised ViT (positive control)"
# 1: labels only, whose last-block [CLS] map did not beat the intensity map on cluttered images (docs/METHOD.md §8);
# 2: labels, and that map trained onto the object
CONTROL_VERSION = 2
CONTROL_MAP_WEIGHT = 1.0


def supervised_control(config: Config, ec: EvalConfig, device, progress: bool = False,
                       map_weight: float = CONTROL_MAP_WEIGHT) -> dict:
    """The object-awareness measure's positive control: the shared-init encoder trained, for `ec.control_epochs`,
    on the training images made `cluttered` (their own clutter, drawn from another seed than the test's), with
    labels and, weighted by `map_weight` (0: labels only), the cross-entropy from each image's object (its share of
    every patch's pixels) to its last-block [CLS] attention: a model that attends to the object because it was
    taught to, through the same weights, export and attention path the models' maps are read from. Scored as an
    encoder is: {score_name(variant): IoU, 'accuracy_cluttered': its top-1 on the cluttered test images}."""
    train, test = dataset_of(config, "train"), eval_splits(config, ec)[1]
    images, masks = cluttered(train.images, torch.Generator().manual_seed(6))
    train = dataclasses.replace(train, images=images)
    share = F.avg_pool2d(masks.float().unsqueeze(1), config.patch_size).flatten(1)
    model = random_init_encoder(config, device)
    vit = train_classifier(model, train.to(device), ec.control_epochs, config.batch_size, seed=config.seed,
                           precision=config.precision, augment=False, progress=progress,
                           cls_targets=share / share.sum(1, keepdim=True).clamp_min(1e-8), cls_target_weight=map_weight)
    model.load_state_dict({k: v for k, v in vit.state_dict().items() if k.startswith(ENCODER_PREFIXES)}, strict=False)
    test_cluttered = dataclasses.replace(test, images=object_variants(test.images, config.patch_size)["cluttered"][0])
    return {**object_scores(model.eval(), test, ec), "accuracy_cluttered": classifier_accuracy(vit, test_cluttered)}


def baseline_scores(config: Config, ec: EvalConfig, device, progress: bool = False) -> dict:
    """Raw pixels and the randomly initialised (shared-init) encoder, evaluated like a trained model, and the
    object IoU of maps that look at no model (where objects have masks):
    {'random_init': scores, 'raw_pixels': scores, 'uniform map': ...}. The positive control is
    `supervised_control`, computed apart since it costs several pre-training runs."""
    base = mae_twin(config)
    random_init = random_init_encoder(config, device)
    result = {"random_init": evaluate_model(random_init, base, ec, progress, pretext=False)}
    train, test = eval_splits(config, ec)
    pixels = frozen_scores({"pixels": pixel_features(train.images.to(device), train.name)}, train.labels.to(device),
                           {"pixels": pixel_features(test.images.to(device), test.name)}, test.labels.to(device),
                           ec, train.num_classes)
    result["raw_pixels"] = {**pixels, "train_images": len(train), "test_images": len(test)}
    if test.name in OBJECT_MASK_DATASETS:  # maps that look at no model: what a centred dataset gives for free
        result.update(map_baseline_scores(test.images, base.patch_size, ec.attention_mass))
    return result
