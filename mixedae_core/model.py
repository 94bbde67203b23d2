"""MAE, MAE + naive mixing and MixedAE as one ViT built from timm blocks (docs/METHOD.md is the spec).

`method='mae'` is the official facebookresearch/mae `MaskedAutoencoderViT` (same parameter names, init,
masking and loss; checked against its outputs in tests/test_mae_parity.py). The mixing methods reuse the
same encoder and decoder: they only change which tokens enter the encoder, which tokens each image's
decoder sequence gets, the attention of the homologous layers and (MixedAE) add one loss.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from .losses import homologous_contrastive_loss, normalize_patches, patchify, reconstruction_loss
from .mixing import draw_partition, mix_tokens

METHODS = ("mae", "naive", "mixedae")


def check_finite(config, cls, bad):
    """NaN fails every comparison, so a check such as `blr <= 0` lets it through: refuse NaN and infinity
    in every float field of dataclass `cls` first."""
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f"{f.name} must be a finite number, got {value}")


def at_least(config, names, minimum, bad):
    """Each named field is None (where the field allows it) or >= minimum."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            bad(f"{name} must be >= {minimum}, got {value}")


def at_most(config, limits: dict, bad):
    """Each named field is None or <= its limit: values past them would allocate beyond any machine's memory
    (or overflow a generator's seed) before failing."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if value is not None and value > limit:
            bad(f"{name} must be <= {limit:,}, got {value:,}")


@dataclass
class ModelConfig:
    """Every model switch. MAE sizes use the official MAE constructor's keyword names.

    Switches that only MixedAE uses (`topk`, `homologous_layers`, `seg_embed`) default to None, meaning
    "the method's default"; setting them for another method is an error. `hc_weight` and
    `hc_temperature` are read by MixedAE only.
    """
    method: str = "mixedae"           # mae | naive (MAE + naive mixing) | mixedae
    img_size: int = 32                # input images are img_size x img_size
    patch_size: int = 4               # patch side; N = (img_size / patch_size)^2 positions
    in_chans: int = 3                 # image channels
    embed_dim: int = 192              # encoder width
    depth: int = 12                   # encoder blocks
    num_heads: int = 3                # encoder attention heads
    decoder_embed_dim: int = 128      # decoder width
    decoder_depth: int = 4            # decoder blocks
    decoder_num_heads: int = 4        # decoder attention heads
    mlp_ratio: float = 4.0            # MLP hidden width / block width
    norm_pix_loss: bool = True        # reconstruct per-patch standardised pixels (MAE's norm_pix_loss)
    mask_ratio: float = 0.75          # MAE only: share of patches hidden (mixing sets visibility via mix_ratio)
    mix_ratio: float = 0.25           # r: share of positions one image fills; G = 1/r images per group
    mix_mode: str = "compose"         # compose (one sequence per group) | full (G sequences per group)
    seg_embed: str | None = None      # encoder | decoder | none; None = 'encoder' for mixedae
    topk: int | None = None           # keys kept per patch query; None = rN (+ 1 for a shared [CLS], which patches may read)
    homologous_layers: tuple[int, ...] | None = None  # encoder blocks with TopK attention; None = all
    hc_form: str = "attention"        # homologous loss on: attention (own-image attention mass) | features (SupCon)
    hc_weight: float = 1.0            # weight of the homologous loss in the total loss (docs/METHOD.md, section 6)
    hc_temperature: float = 0.1       # temperature of the SupCon loss (hc_form=features)
    hc_proj_dim: int = 128            # output width of the SupCon projection head (hc_form=features)
    cls_per_image: bool = True        # mixing: each image has its own [CLS], which reads that image only, is read by no patch and starts only its decoder (False: one shared [CLS] per sequence, as a ViT's)
    cls_reads_itself: bool = False    # mixing with cls_per_image: the [CLS] query may read its own key too (True: the design before, whose [CLS] read its image in block 0 and then itself)

    def __post_init__(self):
        if self.homologous_layers is not None:
            self.homologous_layers = tuple(int(i) for i in self.homologous_layers)
        self.validate()

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def mixes(self) -> bool:
        return self.method in ("naive", "mixedae")

    @property
    def mix_group_size(self) -> int:
        """G = 1/mix_ratio: the images a mixing method puts in one group (MAE is shown the same groups
        where methods are compared on identical positions)."""
        return round(1 / self.mix_ratio) if self.mix_ratio > 0 else 0

    @property
    def group_size(self) -> int:
        """G: images per mixing group (1 for MAE)."""
        return self.mix_group_size if self.mixes else 1

    @property
    def patch_keys(self) -> int:
        """Keys a patch query may read in a mixed sequence: the N patches, plus the [CLS] when it is shared."""
        return self.num_patches + (0 if self.cls_per_image else 1)

    @property
    def default_topk(self) -> int:
        """rN: exactly an image's own patches (+ 1: a shared [CLS], which patches may read)."""
        return self.patch_keys - self.num_patches + self.num_patches // self.mix_group_size

    @property
    def per_image_cls(self) -> bool:
        """Whether each image's [CLS] is read by no patch and reads only that image (`cls_per_image`, mixing)."""
        return self.mixes and self.cls_per_image

    @property
    def cls_tokens(self) -> int:
        """[CLS] tokens at the start of every encoded sequence: G in compose mixing with `cls_per_image`
        (one per image of the sequence), else 1."""
        return self.group_size if self.mixes and self.mix_mode == "compose" and self.cls_per_image else 1

    @property
    def resolved_seg_embed(self) -> str:
        if self.seg_embed is not None:
            return self.seg_embed
        return "encoder" if self.method == "mixedae" else "none"

    @property
    def resolved_topk(self) -> int | None:
        if self.method != "mixedae":
            return None
        return self.topk if self.topk is not None else self.default_topk

    @property
    def resolved_homologous_layers(self) -> tuple[int, ...]:
        if self.method != "mixedae":
            return ()
        return self.homologous_layers if self.homologous_layers is not None else tuple(range(self.depth))

    @property
    def recognition_references(self) -> dict:
        """Where MixedAE's recognition diagnostics sit by chance and when perfect: TopK accuracy at chance,
        and loss_hc at chance (features: identical projections, log(N - 1); attention: uniform logits,
        -log((rN - 1)/(N - 1))) and when perfect (features: log(rN - 1); attention: 0)."""
        N, rN = self.num_patches, self.num_patches // self.mix_group_size
        if self.hc_form == "features":
            chance, perfect = math.log(N - 1), math.log(rN - 1)
        else:
            chance, perfect = -math.log((rN - 1) / (N - 1)), 0.0
        return {"topk_acc_chance": (rN - 1) / (N - 1), "loss_hc_chance": chance, "loss_hc_perfect": perfect}

    def canonical(self):
        """A copy with every MixedAE switch that equals its default set back to None, so that `topk=rN`
        and `topk=None` (and likewise seg_embed, homologous_layers) name the same model."""
        defaults = {"topk": self.method == "mixedae" and self.topk == self.default_topk,
                    "seg_embed": self.seg_embed == ("encoder" if self.method == "mixedae" else "none"),
                    "homologous_layers": self.method == "mixedae" and self.homologous_layers == tuple(range(self.depth))}
        canonical = dataclasses.replace(self, **{name: None for name, is_default in defaults.items() if is_default})
        if not self.per_image_cls:  # a ViT's [CLS], which reads every token: the switch cannot change the model
            canonical.cls_reads_itself = True
        return canonical

    def validate(self):
        def bad(msg):
            raise ValueError(f"ModelConfig: {msg}")

        check_finite(self, ModelConfig, bad)
        at_least(self, ("img_size", "patch_size", "in_chans", "embed_dim", "num_heads", "decoder_embed_dim",
                        "decoder_num_heads", "hc_proj_dim"), 1, bad)
        at_least(self, ("depth", "decoder_depth", "hc_weight"), 0, bad)  # no blocks: a patch-wise model
        at_most(self, {"img_size": 4096, "in_chans": 64, "embed_dim": 8192, "decoder_embed_dim": 8192, "depth": 256,
                       "decoder_depth": 256, "hc_proj_dim": 8192, "mlp_ratio": 64}, bad)
        if self.mlp_ratio <= 0:
            bad(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.method not in METHODS:
            bad(f"method must be one of {METHODS}, got {self.method!r}")
        if self.img_size % self.patch_size:
            bad(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.num_patches > 4096:  # attention memory grows with its square
            bad(f"(img_size / patch_size)^2 = {self.num_patches} patches; at most 4096: raise patch_size")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            bad("embed_dim must be divisible by num_heads and decoder_embed_dim by decoder_num_heads")
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            bad("embed_dim and decoder_embed_dim must be multiples of 4 (2-D sin-cos position embedding)")
        if not 0 <= self.mask_ratio < 1:
            bad(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mix_mode not in ("compose", "full"):
            bad(f"mix_mode must be 'compose' or 'full', got {self.mix_mode!r}")
        if self.seg_embed not in (None, "encoder", "decoder", "none"):
            bad(f"seg_embed must be 'encoder', 'decoder' or 'none', got {self.seg_embed!r}")
        if self.method != "mixedae":
            for name in ("topk", "homologous_layers"):
                if getattr(self, name) is not None:
                    bad(f"{name} is a MixedAE switch; use method='mixedae' or leave {name}=None")
            if self.seg_embed not in (None, "none"):
                bad("seg_embed is a MixedAE switch; use method='mixedae' or leave seg_embed=None")
        if self.method == "mae" and self.mix_mode != "compose":
            bad("mix_mode is a mixing switch; method='mae' does not mix")
        if not self.mixes:
            return
        G = self.mix_group_size
        if G < 2 or abs(G * self.mix_ratio - 1) > 1e-9:
            bad(f"mix_ratio must be 1/G for an integer G >= 2 (0.5, 0.25, ...), got {self.mix_ratio}")
        if self.num_patches % G:
            bad(f"{self.num_patches} patches cannot be split among G = {G} images; "
                f"choose img_size/patch_size so that (img_size/patch_size)^2 is divisible by {G}")
        if self.topk is not None and not 1 <= self.topk <= self.patch_keys:
            bad(f"topk must be in [1, {self.patch_keys}] (the keys a patch query may read), got {self.topk}")
        for i in self.homologous_layers or ():
            if not 0 <= i < self.depth:
                bad(f"homologous_layers must index encoder blocks 0..{self.depth - 1}, got {i}")
        if self.hc_temperature <= 0:
            bad(f"hc_temperature must be > 0, got {self.hc_temperature}")
        if self.hc_form not in ("attention", "features"):
            bad(f"hc_form must be 'attention' or 'features', got {self.hc_form!r}")


@dataclass
class ModelOutput:
    """What one forward pass gives an experiment. Rows of `pred`/`mask` follow the batch's image order."""
    loss: torch.Tensor                 # loss_rec + hc_weight * loss_hc
    loss_rec: torch.Tensor
    loss_hc: torch.Tensor              # 0 where unused
    pred: torch.Tensor                 # [B, N, p*p*C] one reconstruction per source image
    mask: torch.Tensor                 # [B, N] 1 = hidden from that image (reconstructed), 0 = visible
    src: torch.Tensor                  # [E, N] source slot of each position of each encoded sequence;
                                       # for MAE: 0 where visible, -1 where masked
    seq_of_image: torch.Tensor         # [B] encoded sequence that reconstructs each image
    loss_per_image: torch.Tensor       # [B] reconstruction loss over each image's hidden patches
    ids_restore: torch.Tensor | None = None  # MAE only, as the official code
    topk_acc: torch.Tensor | None = None     # [len(homologous_layers)] on request (diagnostics=True)
    attentions: list[torch.Tensor] | None = field(default=None, repr=False)  # per block [E, H, T, T]


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table with a zero [CLS] row: [1 + grid^2, D].

    First D/2 channels encode the column index, the last D/2 the row index, each as [sin, cos].
    Computed in numpy in float64 as the official code (np.float), then cast: bit-identical to it.
    """
    def one_dim(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    emb = np.concatenate([one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1)
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


class AttentionOut(NamedTuple):
    """What a homologous attention layer returns on request, beside its output."""
    x: torch.Tensor
    probs: torch.Tensor | None         # [B, H, T, T] attention probabilities (return_attention)
    selection: torch.Tensor | None     # [B, H, T-1, T] keys kept by the patch queries (None: nothing dropped)
    loss_hc: torch.Tensor | None       # the attention-form homologous loss of this layer (same_image given)


class TopKAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over the keys `attn_mask` allows, where each patch query keeps only its `topk`
    largest logits ([CLS] queries: every key), and, given `same_image`, the attention-form homologous loss
    on the same logits: per patch query and head, -log of the softmax mass over the other patch keys that
    falls on its own image's keys (docs/METHOD.md, section 4.4). Mean over queries and heads.

    One function with a written-out backward because at the widths where attention is a large share of the
    step, autograd's chain (masked fill, softmax, a second exp for the loss, their backwards) made MixedAE's
    step markedly slower than MAE's. The selection is discrete: no gradient flows through it.
    q, k, v [B, H, T, Dh], the first `n_cls` tokens [CLS]; same_image [B, 1, N, N] over the N = T - n_cls
    patches, 1.0 where two patches share a source image, else 0; attn_mask [B, 1, T, T] boolean (True:
    allowed, as SDPA) or None. Returns (out [B, H, T, Dh], loss or None, probabilities, keep bias
    [B, H, T, T]: 0 kept, -inf dropped, or None).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k, v, scale: float, topk: int | None, same_image: torch.Tensor | None,
                attn_mask: torch.Tensor | None = None, n_cls: int = 1):
        T = q.shape[-2]
        logits = torch.matmul(q, k.transpose(-2, -1))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).mul_(scale)  # fp32 under autocast
        if attn_mask is not None:  # as an additive bias over the heads: far cheaper than a broadcast masked_fill
            logits += torch.zeros(attn_mask.shape, device=logits.device).masked_fill_(~attn_mask, float("-inf"))
        patch_exp = own_exp = loss = other_mass = own_mass = None
        if same_image is not None:
            patch = logits[:, :, n_cls:, n_cls:]  # its own shift: a dominant [CLS] key must not underflow the patches
            patch_exp = (patch - patch.amax(-1, keepdim=True)).exp_()
            patch_exp.diagonal(dim1=-2, dim2=-1).zero_()  # attending to itself earns nothing
            own_exp = patch_exp * same_image
            other_mass, own_mass = patch_exp.sum(-1), own_exp.sum(-1)
            loss = (other_mass.log() - own_mass.log()).mean()
        keep_bias = None
        if topk is not None and topk < T:
            kept = logits[:, :, n_cls:].topk(topk, dim=-1, sorted=False).indices
            # 0 on kept keys, -inf on dropped ones: adding it is far cheaper on CPUs than a boolean masked_fill
            keep_bias = torch.full_like(logits, float("-inf"))
            keep_bias[:, :, :n_cls] = 0.0
            keep_bias[:, :, n_cls:].scatter_(-1, kept, 0.0)
            logits += keep_bias
        probs = torch.softmax(logits, dim=-1)
        out = torch.matmul(probs.to(v.dtype), v)
        ctx.save_for_backward(q, k, v, probs, patch_exp, own_exp, other_mass, own_mass)
        ctx.scale, ctx.n_cls = scale, n_cls
        ctx.mark_non_differentiable(probs)
        return out, loss, probs, keep_bias

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, d_out, d_loss, _d_probs, _d_keep_bias):
        q, k, v, probs, patch_exp, own_exp, other_mass, own_mass = ctx.saved_tensors
        d_probs = torch.matmul(d_out, v.transpose(-2, -1)).to(probs.dtype)
        dv = torch.matmul(probs.transpose(-2, -1).to(d_out.dtype), d_out)
        d_logits = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
        if patch_exp is not None and d_loss is not None:
            # d/dl_ij of log(other_mass_i) - log(own_mass_i) = e_ij / other_mass_i - [j own] e_ij / own_mass_i
            c = d_loss / other_mass.numel()
            d_patch = d_logits[:, :, ctx.n_cls:, ctx.n_cls:]
            d_patch.addcmul_(patch_exp, (c / other_mass).unsqueeze(-1))
            d_patch.addcmul_(own_exp, (-c / own_mass).unsqueeze(-1))
        d_logits = d_logits.mul_(ctx.scale).to(q.dtype)
        dq = torch.matmul(d_logits, k)
        dk = torch.matmul(d_logits.transpose(-2, -1), q)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


class HomologousAttention(Attention):
    """timm `Attention` whose patch queries keep only their `topk` largest logits (homologous TopK).

    Parameter-free: the parameters are timm's (`qkv`, `proj`), so the weights load into a stock ViT.
    `topk=None` is global attention (timm's own code path). The [CLS] queries (the first `n_cls` tokens)
    keep every key `attn_mask` (boolean, True = allowed, as SDPA) allows. With `return_attention` (the
    probabilities and the selection) or `same_image` (the attention-form homologous loss on this layer's
    logits) the forward returns an `AttentionOut`, as DINO returns attention by argument.
    """

    def forward(self, x, attn_mask=None, is_causal=False, topk: int | None = None, return_attention: bool = False,
                same_image: torch.Tensor | None = None, n_cls: int = 1):
        if topk is not None and topk >= x.shape[1]:
            topk = None  # keeps every key: global attention, timm's own path where nothing else is asked
        if topk is None and not return_attention and same_image is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if (attn_mask is not None and attn_mask.dtype != torch.bool) or is_causal or self.gate is not None \
                or (self.training and self.attn_drop.p):
            raise ValueError("HomologousAttention's TopK/attention-returning path supports neither an additive "
                             "attn_mask, is_causal, gated attention nor attention dropout")
        B, T, _ = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x, loss_hc, probs, keep_bias = TopKAttention.apply(q, k, v, self.scale, topk, same_image, attn_mask, n_cls)
        x = self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(B, T, self.attn_dim))))
        if not return_attention and same_image is None:
            return x
        selection = None if keep_bias is None or not return_attention else keep_bias[:, :, n_cls:] == 0
        return AttentionOut(x, probs if return_attention else None, selection, loss_hc)


class HomologousBlock(Block):
    """timm `Block` whose attention takes `topk` and can return what `HomologousAttention` returns."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, attn_layer=HomologousAttention, **kwargs)

    def forward(self, x, topk: int | None = None, return_attention: bool = False,
                same_image: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None, n_cls: int = 1):
        """Returns (x, AttentionOut or None)."""
        y = self.attn(self.norm1(x), attn_mask=attn_mask, topk=topk, return_attention=return_attention,
                      same_image=same_image, n_cls=n_cls)
        extra = None
        if return_attention or same_image is not None:
            y, extra = y.x, y
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, extra


def per_image_cls_mask(src: torch.Tensor, cls_slot: torch.Tensor | None, n_cls: int,
                       reads_itself: bool = False) -> torch.Tensor:
    """Boolean attention mask [E, 1, T, T] (True: allowed, as SDPA) that gives every image of a mixed sequence
    its own [CLS]: a [CLS] query reads its own image's patches (and, with `reads_itself`, its own key); no
    patch query reads a [CLS]; patch-to-patch pairs are left to the attention.

    src [E, N] source slot of every patch; the `n_cls` leading [CLS] tokens belong to slots 0..n_cls-1
    (compose), or, with n_cls = 1, to `cls_slot` [E] (full: sequence j is image j's).
    """
    E = src.shape[0]
    if n_cls > 1:
        owner = torch.arange(n_cls, device=src.device).expand(E, -1)
    else:
        owner = cls_slot.view(E, 1)
    token_src = torch.cat([owner, src], dim=1)  # [E, T]
    is_cls = torch.arange(token_src.shape[1], device=src.device) < n_cls
    cls_query, patch_key = is_cls.unsqueeze(1), ~is_cls.unsqueeze(0)
    own_image = token_src.unsqueeze(2) == token_src.unsqueeze(1)
    allowed = torch.where(cls_query, own_image & (patch_key | reads_itself), patch_key)
    return allowed.unsqueeze(1)


def topk_accuracy(selection: torch.Tensor | None, src: torch.Tensor) -> torch.Tensor:
    """Share of the patch keys kept by patch queries that come from the query's own image.

    The query's own key is left out (a query nearly always keeps itself, which would lift the score
    above chance for free); chance is then (rN - 1) / (N - 1), about r.
    selection [E, H, N, n_cls + N] from `HomologousAttention` (None: K covers every token, nothing dropped).
    """
    N = src.shape[1]
    others = ~torch.eye(N, dtype=torch.bool, device=src.device)
    same_src = ((src.unsqueeze(2) == src.unsqueeze(1)) & others).unsqueeze(1)  # [E, 1, N, N]
    kept = others.expand_as(same_src) if selection is None else selection[..., -N:] & others
    return (kept & same_src).sum() / kept.sum().clamp(min=1)


def recognition_warnings(config: ModelConfig, loss_hc: float, topk_acc_layers) -> list[str]:
    """Sentences for a MixedAE run whose homologous recognition sits where chance puts it: TopK accuracy
    (mean over layers) within 10 % of the way from chance to 1 (where K selects at all), or loss_hc within
    10 % of the way from its chance value to its perfect value. Empty for other methods and for a run that
    recognises."""
    if config.method != "mixedae":
        return []
    refs, out = config.recognition_references, []
    selects = config.resolved_topk < config.patch_keys  # K = every key keeps all: chance by design
    if topk_acc_layers and selects:
        mean = sum(topk_acc_layers) / len(topk_acc_layers)
        if mean < refs["topk_acc_chance"] + 0.1 * (1 - refs["topk_acc_chance"]):
            out.append(f"TopK accuracy {mean:.3f} (mean over layers) is at chance ({refs['topk_acc_chance']:.3f}): "
                       "the attention does not select the query's own image")
    span = refs["loss_hc_chance"] - refs["loss_hc_perfect"]
    if config.hc_weight > 0 and loss_hc > refs["loss_hc_chance"] - 0.1 * span:
        out.append(f"loss_hc {loss_hc:.3f} is at its chance value {refs['loss_hc_chance']:.3f} "
                   f"(perfect: {refs['loss_hc_perfect']:.3f}): homologous recognition has not started")
    return out


class MixedAutoencoderViT(nn.Module):
    """One ViT for `mae`, `naive` and `mixedae`; module names and init follow the official MAE."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        # Creation order matches the official MaskedAutoencoderViT, so the same seed gives the same init.
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, c.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([
            HomologousBlock(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(c.depth)])
        self.norm = norm_layer(c.embed_dim)

        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, c.decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(c.decoder_depth)])
        self.decoder_norm = norm_layer(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size ** 2 * c.in_chans, bias=True)

        # MixedAE-only modules come last so that MAE's init is untouched by them.
        seg = c.resolved_seg_embed
        self.seg_embed = None
        if seg != "none":
            dim = c.embed_dim if seg == "encoder" else c.decoder_embed_dim
            self.seg_embed = nn.Parameter(torch.zeros(c.group_size, dim))
        self.hc_head = None
        if c.method == "mixedae" and c.hc_form == "features":
            with torch.random.fork_rng(devices=[]):  # its default init must not shift the shared init below
                self.hc_head = nn.Sequential(nn.Linear(c.embed_dim, c.embed_dim), nn.GELU(),
                                             nn.Linear(c.embed_dim, c.hc_proj_dim))
        self.initialize_weights()

    # ------------------------------------------------------------------ init (official MAE)
    def initialize_weights(self):
        grid = int(self.patch_embed.num_patches ** 0.5)
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like nn.Linear, as MAE
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)
        # After everything MAE has: with one seed, all methods start from the same shared weights.
        if self.seg_embed is not None:
            nn.init.normal_(self.seg_embed, std=0.02)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ------------------------------------------------------------------ pieces
    def patchify(self, imgs):
        return patchify(imgs, self.config.patch_size)

    def random_masking(self, x, mask_ratio, noise=None):
        """MAE's per-sample random masking by argsort of uniform noise [B, N]."""
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        elif noise.shape != (N, L):
            raise ValueError(f"masking noise must have shape {(N, L)} (batch, patches), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def encode(self, x, topk=None, return_attention=False, same_image=None, attn_mask=None, n_cls=1):
        """Run the encoder blocks on [E, T, D] tokens (`n_cls` [CLS] first), TopK in the homologous layers,
        which also compute the attention-form homologous loss given `same_image` ([E, 1, N, N], see
        TopKAttention); `attn_mask` (boolean, [E, 1, T, T]) in every block.
        Returns (normalised tokens, per-block AttentionOut, or None where nothing was asked)."""
        homologous = self.config.resolved_homologous_layers
        extras = []
        for i, blk in enumerate(self.blocks):
            x, extra = blk(x, topk if i in homologous else None, return_attention,
                           same_image if i in homologous else None, attn_mask, n_cls)
            extras.append(extra)
        return self.norm(x), extras

    def decode(self, x):
        """Decoder on full-length [B, 1 + N, Dd] sequences; returns [B, N, p*p*C]."""
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def _cls(self, n):
        return (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)

    def unmixed_attn_mask(self, num_patches: int) -> torch.Tensor | None:
        """The attention mask pre-training gave one image's tokens ([CLS] first), for an unmixed image of
        `num_patches` patches: with a per-image [CLS], no patch reads it (and it reads only patches unless
        `cls_reads_itself`); None for a ViT's [CLS] (MAE, shared [CLS]), which reads and is read by all."""
        c = self.config
        if not c.per_image_cls:
            return None
        one_image = torch.zeros(1, num_patches, dtype=torch.long, device=self.pos_embed.device)
        return per_image_cls_mask(one_image, one_image[:, 0], 1, c.cls_reads_itself)

    def forward_features(self, imgs, return_attention=False):
        """Single unmixed images, no masking, global attention among the patches, and the [CLS] attention
        structure of pre-training (`unmixed_attn_mask`): what `timm_encoder`'s ViT computes.

        Returns normalised tokens [B, 1 + N, D] (and the attention of every block if asked).
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, extras = self.encode(torch.cat([self._cls(x.shape[0]), x], dim=1), None, return_attention,
                                attn_mask=self.unmixed_attn_mask(x.shape[1]))
        return (x, [e.probs for e in extras]) if return_attention else x

    # ------------------------------------------------------------------ forward
    def forward(self, imgs, mask_ratio=None, noise=None, diagnostics=False, return_attention=False) -> ModelOutput:
        """One pre-training step's forward. `noise` replaces the random draw: MAE's masking noise [B, N],
        or the mixing partition noise [B/G, N]. `diagnostics` adds TopK accuracy per homologous layer;
        `return_attention` the attention probabilities of every encoder block."""
        c = self.config
        B = imgs.shape[0]
        if imgs.ndim != 4 or imgs.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(f"expected images [B, {c.in_chans}, {c.img_size}, {c.img_size}], "
                             f"got {tuple(imgs.shape)}")
        need_attention = diagnostics or return_attention
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        target = self.patchify(imgs)
        if c.norm_pix_loss:
            target = normalize_patches(target)

        if not c.mixes:
            x, mask, ids_restore = self.random_masking(x, c.mask_ratio if mask_ratio is None else mask_ratio, noise)
            latent, extras = self.encode(torch.cat([self._cls(B), x], dim=1), None, need_attention)
            y = self.decoder_embed(latent)
            mask_tokens = self.mask_token.repeat(B, ids_restore.shape[1] + 1 - y.shape[1], 1)
            y_ = torch.cat([y[:, 1:, :], mask_tokens], dim=1)
            y_ = torch.gather(y_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[2]))
            pred = self.decode(torch.cat([y[:, :1, :], y_], dim=1))
            loss, loss_per_image = reconstruction_loss(pred, target, mask)
            src = (mask.long() * -1)  # 0 visible, -1 masked: one image per sequence
            return ModelOutput(loss=loss, loss_rec=loss, loss_hc=torch.zeros((), device=imgs.device),
                               pred=pred, mask=mask, src=src, seq_of_image=torch.arange(B, device=imgs.device),
                               loss_per_image=loss_per_image, ids_restore=ids_restore,
                               attentions=[e.probs for e in extras] if need_attention else None)

        G = c.group_size
        if B % G:
            raise ValueError(f"batch size {B} must be divisible by the group size G = 1/mix_ratio = {G}")
        if mask_ratio is not None:
            raise ValueError("mask_ratio applies to method='mae' only; mixing sets visibility through mix_ratio")
        sets = draw_partition(B // G, x.shape[1], G, noise, device=x.device)
        mixed, src, seq_of_image = mix_tokens(x, sets, c.mix_mode)
        seg = c.resolved_seg_embed
        if seg == "encoder":
            mixed = mixed + F.embedding(src, self.seg_embed)  # its backward is cheaper than indexing's
        attention_loss = c.method == "mixedae" and c.hc_form == "attention" and c.hc_weight > 0
        same_image = (src.unsqueeze(2) == src.unsqueeze(1)).unsqueeze(1).float() if attention_loss else None
        E, n_cls = mixed.shape[0], c.cls_tokens
        slot = torch.arange(B, device=imgs.device) % G
        cls_mask = per_image_cls_mask(src, slot if c.mix_mode == "full" else None, n_cls,
                                      c.cls_reads_itself) if c.cls_per_image else None
        # K >= every key a patch query may read selects nothing: global attention (the mask still applies)
        topk = c.resolved_topk if c.resolved_topk is not None and c.resolved_topk < c.patch_keys else None
        latent, extras = self.encode(torch.cat([self._cls(E).expand(-1, n_cls, -1), mixed], dim=1),
                                     topk, need_attention, same_image, cls_mask, n_cls)

        # Unmix: image b's decoder sequence holds its own encoded tokens and mask tokens elsewhere;
        # it never receives another image's patch tokens.
        y = self.decoder_embed(latent)[seq_of_image]
        visible = src[seq_of_image] == slot.unsqueeze(1)
        tokens = torch.where(visible.unsqueeze(-1), y[:, n_cls:], self.mask_token.to(y.dtype))
        if seg == "decoder":
            tokens = tokens + visible.unsqueeze(-1) * self.seg_embed[slot].unsqueeze(1)
        own_cls = y[torch.arange(B, device=imgs.device), slot if n_cls > 1 else 0].unsqueeze(1)
        pred = self.decode(torch.cat([own_cls, tokens], dim=1))
        mask = (~visible).float()  # not pred's dtype: under bf16 autocast the sums of a 0/1 mask round
        loss_rec, loss_per_image = reconstruction_loss(pred, target, mask)

        loss_hc = torch.zeros((), device=imgs.device)
        if attention_loss:
            loss_hc = torch.stack([extras[i].loss_hc for i in c.resolved_homologous_layers]).mean()
        elif self.hc_head is not None:
            z = F.normalize(self.hc_head(latent[:, n_cls:]), dim=-1)
            loss_hc = homologous_contrastive_loss(z, src, c.hc_temperature)
        loss = loss_rec + c.hc_weight * loss_hc if c.method == "mixedae" else loss_rec

        topk_acc = None
        if diagnostics and c.resolved_homologous_layers:
            topk_acc = torch.stack([topk_accuracy(extras[i].selection, src) for i in c.resolved_homologous_layers])
        return ModelOutput(loss=loss, loss_rec=loss_rec, loss_hc=loss_hc, pred=pred, mask=mask, src=src,
                           seq_of_image=seq_of_image, loss_per_image=loss_per_image, topk_acc=topk_acc,
                           attentions=[e.probs for e in extras] if return_attention else None)


class MaskedAutoencoderViT(MixedAutoencoderViT):
    """`method='mae'` behind the official constructor and `(loss, pred, mask)` return, for code and
    checkpoints written for facebookresearch/mae."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_pix_loss=False):
        super().__init__(ModelConfig(
            method="mae", img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_pix_loss=norm_pix_loss))

    def forward(self, imgs, mask_ratio=0.75, noise=None):
        out = super().forward(imgs, mask_ratio=mask_ratio, noise=noise)
        return out.loss, out.pred, out.mask


def build_mae(**kwargs) -> MaskedAutoencoderViT:
    """The official MAE constructor's keyword names (img_size, patch_size, ..., norm_pix_loss)."""
    return MaskedAutoencoderViT(**kwargs)


def build_model(config: ModelConfig) -> MixedAutoencoderViT:
    return MixedAutoencoderViT(config)


ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def encoder_state_dict(model: MixedAutoencoderViT) -> dict:
    """The encoder's weights under timm `VisionTransformer` names (they are the same names)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


class PretrainedViT(VisionTransformer):
    """A stock timm ViT that applies, unless given another, the attention mask pre-training gave an unmixed
    image's tokens (`MixedAutoencoderViT.unmixed_attn_mask`; None: plain global attention)."""

    def __init__(self, *args, attn_mask: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("pretraining_attn_mask", attn_mask, persistent=False)

    def forward_features(self, x, attn_mask=None, is_causal=False):
        if attn_mask is None and not is_causal:
            attn_mask = self.pretraining_attn_mask
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward_intermediates(self, x, *args, attn_mask=None, is_causal=False, **kwargs):
        if attn_mask is None and not is_causal:
            attn_mask = self.pretraining_attn_mask
        return super().forward_intermediates(x, *args, attn_mask=attn_mask, is_causal=is_causal, **kwargs)


def timm_encoder(model: MixedAutoencoderViT) -> VisionTransformer:
    """A timm ViT ([CLS] pooling, no head) holding the model's encoder and computing what its
    `forward_features` computes."""
    c = model.config
    vit = PretrainedViT(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                        embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                        qkv_bias=True, num_classes=0, global_pool="token",
                        attn_mask=model.unmixed_attn_mask(c.num_patches))
    vit.load_state_dict(encoder_state_dict(model), strict=True)
    return vit.to(next(model.parameters()).device)
