"""Homologous attention: timm's `Attention` and `Block` whose patch queries keep only their K largest logits
(MixedAE's homologous TopK), computing on request the attention-form homologous loss and returning the
attention, as DINO returns it, by argument; and the masks and diagnostics of mixed sequences.
"""
from typing import NamedTuple

import torch
from timm.models.vision_transformer import Attention, Block


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
        if topk is not None:
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
    `topk=None` is global attention (timm's own code path); `Switches.kept_keys` decides which. The [CLS] queries (the first `n_cls` tokens)
    keep every key `attn_mask` (boolean, True = allowed, as SDPA) allows. With `return_attention` (the
    probabilities and the selection) or `same_image` (the attention-form homologous loss on this layer's
    logits) the forward returns an `AttentionOut`, as DINO returns attention by argument.
    """

    def forward(self, x, attn_mask=None, is_causal=False, topk: int | None = None, return_attention: bool = False,
                same_image: torch.Tensor | None = None, n_cls: int = 1):
        if topk is not None and not 1 <= topk <= x.shape[1]:
            raise ValueError(f"topk must be in [1, {x.shape[1]}] (the keys of this sequence), got {topk}")
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
