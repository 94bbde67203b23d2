"""MAE and MixedAE as ViTs built from timm blocks, in the shape of the official MAE's `models_mae.py`
(docs/METHOD.md is the spec).

`MaskedAutoencoderViT` is the official facebookresearch/mae model (same parameter names, init, masking and
loss; checked against its outputs in tests/test_mae_parity.py): `forward_encoder`, `forward_decoder`,
`forward_loss`. `MixedAutoencoderViT` (MAE + naive mixing, and MixedAE) is what mixing adds to it: which
tokens enter the encoder, which tokens each image's decoder sequence gets, the attention of the homologous
layers and (MixedAE) one more loss, under names of its own (`forward_mixed_encoder`, `forward_unmixing_decoder`,
`forward_mixed_loss`), so that every override keeps its base method's signature. The switches' values are validated
by `config.ModelConfig`; what they mean is read once, in the constructor, into `self.switches` (switches.py).
"""
import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from .attention import HomologousBlock, per_image_cls_mask, topk_accuracy
from .config import ModelConfig
from .losses import homologous_contrastive_loss, normalize_patches, patchify, reconstruction_loss
from .mixing import draw_partition, mix_tokens
from .switches import resolve


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


class MaskedAutoencoderViT(nn.Module):
    """MAE: the official `MaskedAutoencoderViT` (module names, creation order and init as the official code,
    so the same seed gives the same weights), configured by a `ModelConfig` with method='mae'."""

    mixes = False  # whether this class mixes images: each method has its class, and build_model picks it

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.switches = resolve(config)  # the one reading of the config's switches; the model reads only these
        if self.switches.mixes != self.mixes:
            raise ValueError(f"method={config.method!r} is built by build_model(config), not {type(self).__name__}")
        c = self.config = config
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
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
        self.initialize_weights()

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

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

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

    def embed(self, imgs):
        """Patch tokens with their position embedding, [B, N, D], after checking the images' shape."""
        c = self.config
        if imgs.ndim != 4 or imgs.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise ValueError(f"expected images [B, {c.in_chans}, {c.img_size}, {c.img_size}], "
                             f"got {tuple(imgs.shape)}")
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def expand_cls(self, n):
        return (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)

    def encode(self, x, topk=None, return_attention=False, same_image=None, attn_mask=None, n_cls=1):
        """The encoder blocks on [E, T, D] tokens (`n_cls` [CLS] first): TopK `topk` in the homologous layers,
        which also compute the attention-form homologous loss given `same_image` ([E, 1, N, N], see
        TopKAttention); `attn_mask` (boolean, [E, 1, T, T]) in every block.
        Returns (normalised tokens, per-block AttentionOut, or None where nothing was asked)."""
        homologous = self.switches.homologous_layers
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

    def unmixed_attn_mask(self, num_patches: int) -> torch.Tensor | None:
        """The attention mask pre-training gave one unmixed image's tokens ([CLS] first): None, a ViT's."""
        return None

    def forward_features(self, imgs, return_attention=False):
        """Single unmixed images, no masking, global attention among the patches, and the [CLS] attention
        structure of pre-training (`unmixed_attn_mask`): what `timm_encoder`'s ViT computes.

        Returns normalised tokens [B, 1 + N, D] (and the attention of every block if asked).
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, extras = self.encode(torch.cat([self.expand_cls(x.shape[0]), x], dim=1), None, return_attention,
                                attn_mask=self.unmixed_attn_mask(x.shape[1]))
        return (x, [e.probs for e in extras]) if return_attention else x

    def forward_encoder(self, imgs, mask_ratio, noise=None, return_attention=False):
        """(latent [B, 1 + visible, D], mask [B, N], ids_restore [B, N], per-block AttentionOut)."""
        x, mask, ids_restore = self.random_masking(self.embed(imgs), mask_ratio, noise)
        latent, extras = self.encode(torch.cat([self.expand_cls(x.shape[0]), x], dim=1), None, return_attention)
        return latent, mask, ids_restore, extras

    def forward_decoder(self, latent, ids_restore):
        y = self.decoder_embed(latent)
        mask_tokens = self.mask_token.repeat(y.shape[0], ids_restore.shape[1] + 1 - y.shape[1], 1)
        y_ = torch.cat([y[:, 1:, :], mask_tokens], dim=1)
        y_ = torch.gather(y_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[2]))
        return self.decode(torch.cat([y[:, :1, :], y_], dim=1))

    def forward_loss(self, imgs, pred, mask):
        """(mean squared error over the hidden patches, the same per image [B])."""
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            target = normalize_patches(target)
        return reconstruction_loss(pred, target, mask)

    def forward(self, imgs, mask_ratio=None, noise=None, diagnostics=False, return_attention=False) -> ModelOutput:
        """One pre-training step's forward. `noise` replaces the masking noise [B, N]; `diagnostics` or
        `return_attention` add the attention probabilities of every encoder block."""
        need_attention = diagnostics or return_attention
        latent, mask, ids_restore, extras = self.forward_encoder(
            imgs, self.config.mask_ratio if mask_ratio is None else mask_ratio, noise, need_attention)
        pred = self.forward_decoder(latent, ids_restore)
        loss, loss_per_image = self.forward_loss(imgs, pred, mask)
        B = imgs.shape[0]
        return ModelOutput(loss=loss, loss_rec=loss, loss_hc=torch.zeros((), device=imgs.device), pred=pred,
                           mask=mask, src=mask.long() * -1, seq_of_image=torch.arange(B, device=imgs.device),
                           loss_per_image=loss_per_image, ids_restore=ids_restore,
                           attentions=[e.probs for e in extras] if need_attention else None)


class Mixing(NamedTuple):
    """Where a mixed batch's tokens came from, for the decoder and the losses."""
    src: torch.Tensor           # [E, N] source slot of each position of each encoded sequence
    seq_of_image: torch.Tensor  # [B] encoded sequence that reconstructs each image
    slot: torch.Tensor          # [B] each image's slot in its group
    n_cls: int                  # [CLS] tokens leading every encoded sequence


class MixedAutoencoderViT(MaskedAutoencoderViT):
    """MAE + mixing: `naive` (mixing alone) and `mixedae` (+ segment embedding, homologous TopK attention
    and the homologous loss). The MAE modules and init are untouched: with one seed, every method starts
    from the same shared weights; mixing's own modules are created and initialised after them.

    Its encoder, decoder and loss take what mixing needs, so they have names of their own
    (`forward_mixed_encoder`, `forward_unmixing_decoder`, `forward_mixed_loss`); MAE's keep their meaning."""
    mixes = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c, s = config, self.switches
        self.seg_embed = None
        if s.seg_embed is not None:
            dim = c.embed_dim if s.seg_embed == "encoder" else c.decoder_embed_dim
            self.seg_embed = nn.Parameter(torch.zeros(s.group_size, dim))
        self.hc_head = None
        if s.loss_form == "features":
            with torch.random.fork_rng(devices=[]):  # its default init must not shift the draws below
                self.hc_head = nn.Sequential(nn.Linear(c.embed_dim, c.embed_dim), nn.GELU(),
                                             nn.Linear(c.embed_dim, c.hc_proj_dim))
            self.hc_head.apply(self._init_weights)
        if self.seg_embed is not None:
            nn.init.normal_(self.seg_embed, std=0.02)

    @classmethod
    def holding(cls, model: MaskedAutoencoderViT, mix_mode: str = "compose") -> "MixedAutoencoderViT":
        """`model`'s weights in a mixing model that mixes in `mix_mode`: the model itself where it already does;
        for MAE, naive mixing with one shared [CLS], a ViT's (MAE's encoder on mixed inputs)."""
        if model.mixes and model.switches.mix_mode == mix_mode:
            return model
        c = dataclasses.replace(model.config, mix_mode=mix_mode,
                                **({} if model.mixes else {"method": "naive", "cls_per_image": False}))
        with torch.random.fork_rng(devices=[]):  # its init is overwritten: it must not consume the caller's draws
            mixing = cls(c).to(next(model.parameters()).device)
        mixing.load_state_dict(model.state_dict(), strict=True)
        return mixing.train(model.training)

    def unmixed_attn_mask(self, num_patches: int) -> torch.Tensor | None:
        """With a per-image [CLS]: no patch reads it, and it reads only patches unless `cls_reads_itself`;
        None for a shared [CLS], a ViT's, which reads and is read by all."""
        s = self.switches
        if not s.per_image_cls:
            return None
        one_image = torch.zeros(1, num_patches, dtype=torch.long, device=self.pos_embed.device)
        return per_image_cls_mask(one_image, one_image[:, 0], 1, s.cls_reads_itself)

    def forward_mixed_encoder(self, imgs, noise=None, return_attention=False, homologous=True, segments=True):
        """Mix groups of G images (partition `noise` [B/G, N] or a fresh draw) and encode the mixed sequences:
        with the homologous layers' TopK and loss unless not `homologous`, the encoder's segment embedding unless
        not `segments`. Returns (latent [E, n_cls + N, D], Mixing, per-block AttentionOut)."""
        s = self.switches
        x = self.embed(imgs)
        G = s.group_size
        sets = draw_partition(x.shape[0] // G, x.shape[1], G, noise, device=x.device)
        mixed, src, seq_of_image = mix_tokens(x, sets, s.mix_mode)
        if segments and s.seg_embed == "encoder":
            mixed = mixed + F.embedding(src, self.seg_embed)  # its backward is cheaper than indexing's
        same_image = None
        if homologous and s.loss_form == "attention":
            same_image = (src.unsqueeze(2) == src.unsqueeze(1)).unsqueeze(1).float()
        E, n_cls = mixed.shape[0], s.n_cls
        slot = torch.arange(x.shape[0], device=x.device) % G
        cls_mask = per_image_cls_mask(src, slot if s.mix_mode == "full" else None, n_cls,
                                      s.cls_reads_itself) if s.per_image_cls else None
        latent, extras = self.encode(torch.cat([self.expand_cls(E).expand(-1, n_cls, -1), mixed], dim=1),
                                     s.kept_keys if homologous else None, return_attention, same_image, cls_mask,
                                     n_cls)
        return latent, Mixing(src, seq_of_image, slot, n_cls), extras

    def forward_unmixing_decoder(self, latent, mixing: Mixing):
        """Unmix: image b's decoder sequence holds its own encoded tokens and mask tokens elsewhere; it never
        receives another image's patch tokens. Returns (pred [B, N, p*p*C], mask [B, N]: 1 = reconstructed)."""
        y = self.decoder_embed(latent)[mixing.seq_of_image]
        visible = mixing.src[mixing.seq_of_image] == mixing.slot.unsqueeze(1)
        tokens = torch.where(visible.unsqueeze(-1), y[:, mixing.n_cls:], self.mask_token.to(y.dtype))
        if self.switches.seg_embed == "decoder":
            tokens = tokens + visible.unsqueeze(-1) * self.seg_embed[mixing.slot].unsqueeze(1)
        own_cls = y[torch.arange(len(y), device=y.device), mixing.slot if mixing.n_cls > 1 else 0].unsqueeze(1)
        pred = self.decode(torch.cat([own_cls, tokens], dim=1))
        return pred, (~visible).float()  # not pred's dtype: under bf16 autocast the sums of a 0/1 mask round

    def homologous_loss(self, latent, mixing: Mixing, extras):
        """MixedAE's homologous loss in its configured form (docs/METHOD.md, section 4.4); 0 without one."""
        form = self.switches.loss_form
        if form == "attention":
            return torch.stack([extras[i].loss_hc for i in self.switches.homologous_layers]).mean()
        if form == "features":
            z = F.normalize(self.hc_head(latent[:, mixing.n_cls:]), dim=-1)
            return homologous_contrastive_loss(z, mixing.src, self.config.hc_temperature)
        return torch.zeros((), device=latent.device)

    def forward_mixed_loss(self, imgs, pred, mask, latent, mixing: Mixing, extras):
        """(loss, loss_rec, loss_per_image [B], loss_hc): reconstruction + hc_weight x the homologous loss."""
        loss_rec, loss_per_image = self.forward_loss(imgs, pred, mask)
        loss_hc = self.homologous_loss(latent, mixing, extras)
        loss = loss_rec + self.switches.hc_weight * loss_hc if self.switches.loss_form else loss_rec
        return loss, loss_rec, loss_per_image, loss_hc

    def forward(self, imgs, mask_ratio=None, noise=None, diagnostics=False, return_attention=False) -> ModelOutput:
        """One pre-training step's forward. `noise`: the mixing partition noise [B/G, N]. `diagnostics` adds
        TopK accuracy per homologous layer; `return_attention` the attention probabilities of every block."""
        s = self.switches
        if imgs.shape[0] % s.group_size:
            raise ValueError(f"batch size {imgs.shape[0]} must be divisible by the group size G = 1/mix_ratio = "
                             f"{s.group_size}")
        if mask_ratio is not None:
            raise ValueError("mask_ratio applies to method='mae' only; mixing sets visibility through mix_ratio")
        latent, mixing, extras = self.forward_mixed_encoder(imgs, noise, diagnostics or return_attention)
        pred, mask = self.forward_unmixing_decoder(latent, mixing)
        loss, loss_rec, loss_per_image, loss_hc = self.forward_mixed_loss(imgs, pred, mask, latent, mixing, extras)
        topk_acc = None
        if diagnostics and s.homologous_layers:
            topk_acc = torch.stack([topk_accuracy(extras[i].selection, mixing.src) for i in s.homologous_layers])
        return ModelOutput(loss=loss, loss_rec=loss_rec, loss_hc=loss_hc, pred=pred, mask=mask, src=mixing.src,
                           seq_of_image=mixing.seq_of_image, loss_per_image=loss_per_image, topk_acc=topk_acc,
                           attentions=[e.probs for e in extras] if return_attention else None)


class OfficialMAE(MaskedAutoencoderViT):
    """MAE behind the official constructor and `(loss, pred, mask)` return, for code and checkpoints written
    for facebookresearch/mae."""

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


def build_mae(**kwargs) -> OfficialMAE:
    """The official MAE constructor's keyword names (img_size, patch_size, ..., norm_pix_loss)."""
    return OfficialMAE(**kwargs)


def build_model(config: ModelConfig) -> MaskedAutoencoderViT:
    """MAE, or MAE + mixing for the mixing methods."""
    return MixedAutoencoderViT(config) if resolve(config).mixes else MaskedAutoencoderViT(config)


ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def encoder_state_dict(model: MaskedAutoencoderViT) -> dict:
    """The encoder's weights under timm `VisionTransformer` names (they are the same names)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


class PretrainedViT(VisionTransformer):
    """A stock timm ViT that applies, unless given another, the attention mask pre-training gave an unmixed
    image's tokens (`MaskedAutoencoderViT.unmixed_attn_mask`; None: plain global attention)."""

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


def timm_encoder(model: MaskedAutoencoderViT) -> VisionTransformer:
    """A timm ViT ([CLS] pooling, no head) holding the model's encoder and computing what its
    `forward_features` computes."""
    c = model.config
    vit = PretrainedViT(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans,
                        embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                        qkv_bias=True, num_classes=0, global_pool="token",
                        attn_mask=model.unmixed_attn_mask(c.num_patches))
    vit.load_state_dict(encoder_state_dict(model), strict=True)
    return vit.to(next(model.parameters()).device)
