"""Evaluation of a pre-trained encoder: frozen features (kNN, linear probe), optional fine-tuning,
attention maps and object awareness, and the diagnostics of the ablations (cross-image reliance).

Features come from the encoder with global attention on whole, unmixed images (`forward_features`):
what a stock timm ViT loaded with the encoder computes. Two features per image: the [CLS] token and
the mean of the patch tokens, both after the final norm.
"""
import dataclasses

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config, EvalConfig
from .data import TensorDataset, epoch_order, load_dataset, normalize, random_resized_crop_flip
from .mixing import draw_partition
from .model import MixedAutoencoderViT, build_model, timm_encoder
from .train import autocast, lr_schedule, make_optimizer


# ------------------------------------------------------------------------------------------ features
@torch.no_grad()
def extract_features(model: MixedAutoencoderViT, images_uint8: torch.Tensor, dataset: str, batch_size: int = 500,
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


def linear_probe_accuracy(train_x, train_y, test_x, test_y, l2: float = 1e-4, max_iter: int = 300,
                          num_classes: int | None = None) -> float:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS to convergence."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_x, test_x = train_x.float(), test_x.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
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
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).float().mean().item()


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
def attention_map(model: MixedAutoencoderViT, images: torch.Tensor, layer: int = -1,
                  query: int | None = None) -> torch.Tensor:
    """Attention of one encoder block on single images (global attention), from the [CLS] query
    (query=None) or from patch `query` (row-major index), to every patch: [B, heads, grid, grid]."""
    model.eval()
    _, attentions = model.forward_features(images, return_attention=True)
    attn = attentions[layer][:, :, 0 if query is None else 1 + query, 1:]
    grid = int(attn.shape[-1] ** 0.5)
    return attn.reshape(*attn.shape[:2], grid, grid)


def attention_region(attn: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """The patches that hold `mass` of each map's attention (DINO's masks): those at least as attended
    as the patch at which the mass, summed from the top, reaches `mass`. Ties at that value are all
    kept, so a map that is uniform on an object selects exactly the object.
    attn [B, grid, grid] (non-negative) -> bool [B, grid, grid]."""
    flat = attn.flatten(1)
    flat = flat / flat.sum(1, keepdim=True)
    values, _ = flat.sort(dim=1, descending=True)
    before = values.cumsum(1) - values  # mass of the patches ranked above each one
    last = (before < mass).sum(1, keepdim=True) - 1  # rank of the patch that reaches the mass
    threshold = values.gather(1, last)
    return (flat >= threshold).view_as(attn)


# Datasets whose foreground is "pixel > 0" (Fashion-MNIST's background is exactly 0). On natural images
# nearly every pixel is > 0, so no object IoU is reported for them. The generated test images count too,
# only so that the smoke preset exercises the code: their numbers mean nothing.
OBJECT_MASK_DATASETS = ("fashion-mnist", "synthetic")


def foreground_patches(images_uint8: torch.Tensor, patch_size: int, threshold: float = 0.5) -> torch.Tensor:
    """Object mask at patch resolution: a patch is foreground when more than `threshold` of its pixels
    are non-zero (Fashion-MNIST's background is exactly 0). [B, C, H, W] -> bool [B, grid, grid]."""
    pixel_fg = (images_uint8 > 0).any(1, keepdim=True).float()
    return F.avg_pool2d(pixel_fg, patch_size).squeeze(1) > threshold


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item intersection over union of bool masks [B, ...] -> [B]."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


@torch.no_grad()
def object_awareness(model: MixedAutoencoderViT, images_uint8: torch.Tensor, dataset: str, layer: int = -1,
                     mass: float = 0.6, batch_size: int = 500) -> torch.Tensor:
    """Per-image IoU between the head-averaged [CLS] attention region (holding `mass` of the attention)
    and the foreground patches."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images_uint8), batch_size):
        raw = images_uint8[start:start + batch_size].to(device)
        attn = attention_map(model, normalize(raw, dataset), layer).mean(1)
        scores.append(iou(attention_region(attn, mass), foreground_patches(raw, model.config.patch_size)))
    return torch.cat(scores).cpu()


# ------------------------------------------------------------------------------------------ the MI proxies
@torch.no_grad()
def shared_position_loss(model: MixedAutoencoderViT, imgs: torch.Tensor, partition_noise: torch.Tensor,
                         group_size: int = 4, mix_mode: str = "compose"):
    """Reconstruction loss of each image when every method hides the same positions: the partition drawn
    from `partition_noise` [B/G, N] shows image b the positions it gets in its own sequence under
    `mix_mode` (compose: set b mod G; full: set 2b mod G); MAE is shown exactly those positions. So MAE
    and the mixing methods are compared on one pretext. Returns the model output (loss_per_image, mask)."""
    c = model.config
    if c.mixes:
        if (c.group_size, c.mix_mode) != (group_size, mix_mode):
            raise ValueError(f"the model mixes G = {c.group_size} images in {c.mix_mode} mode; "
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
def cross_image_reliance(model: MixedAutoencoderViT, imgs: torch.Tensor, unrelated: torch.Tensor,
                         partition_noise: torch.Tensor | None = None, group_size: int = 4,
                         mix_mode: str = "compose") -> torch.Tensor:
    """How much each image's reconstruction loss rises when the other images of its group are swapped
    for unrelated images, with the same partition (docs/METHOD.md, the MI argument). Every method hides the
    same positions (`shared_position_loss`), so MAE is measured on the same pretext.

    imgs, unrelated [B, C, H, W]. Returns [B]: loss(swapped) - loss(original) for every image. Zero for
    MAE by construction (one image per sequence); positive where the encoder uses the other images.
    """
    G = group_size
    if unrelated.shape != imgs.shape:
        raise ValueError(f"unrelated images must have the batch's shape {tuple(imgs.shape)}, got {tuple(unrelated.shape)}")
    if partition_noise is None:  # one partition for every pass, so only the neighbours change
        partition_noise = torch.rand(imgs.shape[0] // G, model.config.num_patches, device=imgs.device)
    base = shared_position_loss(model, imgs, partition_noise, G, mix_mode).loss_per_image
    rise = torch.empty_like(base)
    for slot in range(G):  # keep the images of one slot, replace every other slot's
        swapped = unrelated.clone()
        swapped[slot::G] = imgs[slot::G]
        rise[slot::G] = (shared_position_loss(model, swapped, partition_noise, G, mix_mode).loss_per_image[slot::G]
                         - base[slot::G])
    return rise


# ------------------------------------------------------------------------------------------ fine-tuning
def finetune(model: MixedAutoencoderViT, train: TensorDataset, test: TensorDataset, epochs: int = 10,
             batch_size: int = 256, blr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0,
             progress: bool = False) -> float:
    """Short end-to-end fine-tuning (for GPU presets): the encoder as a stock timm ViT (global attention)
    with a linear head on [CLS], AdamW with warm-up + cosine, RandomResizedCrop + flip. Returns top-1."""
    device = next(model.parameters()).device
    c = model.config
    vit = timm_encoder(model)
    vit.reset_classifier(train.num_classes)
    vit.to(device).train()
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training images give no full fine-tuning batch of {batch_size}")
    lrs = lr_schedule(blr * batch_size / 256, 0.0, epochs * steps_per_epoch, steps_per_epoch)  # 1 warm-up epoch
    opt = make_optimizer(vit, float(lrs[0]), weight_decay, betas=(0.9, 0.999))
    g = torch.Generator(device).manual_seed(seed)
    step = 0
    for _ in tqdm(range(epochs), disable=not progress, desc="fine-tune"):
        order = torch.randperm(len(train), generator=g, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = random_resized_crop_flip(normalize(train.images[idx].to(device), train.name), c.img_size, g)
            for group in opt.param_groups:
                group["lr"] = float(lrs[step])
            with autocast(device):
                loss = F.cross_entropy(vit(x), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    vit.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 500):
            x = normalize(test.images[start:start + 500].to(device), test.name)
            correct += (vit(x).argmax(1).cpu() == test.labels[start:start + 500].cpu()).sum().item()
    return correct / len(test)


# ------------------------------------------------------------------------------------------ whole models
def eval_splits(config: Config, ec: EvalConfig) -> tuple[TensorDataset, TensorDataset]:
    if config.dataset_kind == "imagefolder":
        raise ValueError("evaluation needs a device-resident dataset with a test split (fashion-mnist, cifar10, "
                         "cifar100, stl10, synthetic); for image folders fine-tune with your own pipeline")
    args = (config.img_size, config.in_chans, config.download, config.synthetic_size, config.seed)
    return (load_dataset(config.dataset_kind, "train", *args).subset(ec.train_subset),
            load_dataset(config.dataset_kind, "test", *args).subset(ec.test_subset))


def evaluate_model(model: MixedAutoencoderViT, config: Config, ec: EvalConfig, progress: bool = False,
                   pretext: bool = True) -> dict:
    """kNN and linear probe on [CLS] and mean-pooled features, the object-awareness IoU and, with
    `pretext`, the pretext measurements of `pretext_scores`."""
    device = next(model.parameters()).device
    train, test = eval_splits(config, ec)
    train_y, test_y = train.labels.to(device), test.labels.to(device)
    tr = extract_features(model, train.images, train.name, ec.batch_size, progress)
    te = extract_features(model, test.images, test.name, ec.batch_size, progress)
    scores = frozen_scores(tr, train_y, te, test_y, ec, train.num_classes)
    object_iou = None
    if train.name in OBJECT_MASK_DATASETS:
        object_iou = object_awareness(model, test.images, test.name, ec.attention_layer, ec.attention_mass,
                                      ec.batch_size).mean().item()
    extra = pretext_scores(model, config, test, ec.pretext_images) if pretext else {}
    return {**scores, "object_iou": object_iou, **extra, "train_images": len(train), "test_images": len(test)}


@torch.no_grad()
def pretext_scores(model: MixedAutoencoderViT, config: Config, test: TensorDataset, n_images: int) -> dict:
    """The pretext measurements of the MI argument, on fixed test images (the same for every run):
    the reconstruction loss when every method hides the same positions, and the cross-image reliance,
    each with the images laid out as random groups and as same-class groups of G.
    Keys: shared_loss_random, shared_loss_class, reliance_random, reliance_class."""
    device = next(model.parameters()).device
    G, N = config.mix_group_size, config.num_patches  # the mixing methods' G; MAE sees the same groups
    n = min(n_images, len(test) // 2) // G * G
    if n == 0:
        raise ValueError(f"pretext scores need at least 2 x G = {2 * G} test images, the test split has {len(test)}")
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:2 * n]
    images = normalize(test.images[pick].to(device), test.name)
    batch, unrelated, labels = images[:n], images[n:], test.labels[pick[:n]]
    noise = torch.rand(n // G, N, generator=torch.Generator().manual_seed(0)).to(device)
    layouts = {"random": torch.arange(n),
               "class": epoch_order(labels, G, G, "class", torch.Generator().manual_seed(0))}
    scores = {}
    for layout, order in layouts.items():
        x = batch[order.to(device)]
        m = len(x) // G * G  # same-class groups can leave a few images out
        x, u, nz = x[:m], unrelated[:m], noise[:m // G]
        scores[f"shared_loss_{layout}"] = shared_position_loss(model, x, nz, G, config.mix_mode).loss_per_image.mean().item()
        scores[f"reliance_{layout}"] = cross_image_reliance(model, x, u, nz, G, config.mix_mode).mean().item()
    return scores


def mae_twin(config: Config) -> Config:
    """The same sizes, data and seed as plain MAE: its random init is every method's shared init."""
    return dataclasses.replace(config, method="mae", topk=None, homologous_layers=None, seg_embed=None,
                               mix_mode="compose")


def baseline_scores(config: Config, ec: EvalConfig, device, progress: bool = False) -> dict:
    """Raw pixels and the randomly initialised (shared-init) encoder, evaluated like a trained model:
    {'random_init': scores, 'raw_pixels': scores}."""
    base = mae_twin(config)
    torch.manual_seed(config.seed)
    random_init = build_model(base).to(device)
    result = {"random_init": evaluate_model(random_init, base, ec, progress, pretext=False)}
    train, test = eval_splits(config, ec)
    pixels = frozen_scores({"pixels": pixel_features(train.images.to(device), train.name)}, train.labels.to(device),
                           {"pixels": pixel_features(test.images.to(device), test.name)}, test.labels.to(device),
                           ec, train.num_classes)
    result["raw_pixels"] = {**pixels, "train_images": len(train), "test_images": len(test)}
    return result
