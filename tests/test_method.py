"""MAE + naive mixing and MixedAE: mixing, unmixing, homologous attention, the losses (docs/METHOD.md)."""
import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

from mixedae_core import (MaskedAutoencoderViT, MixedAutoencoderViT, ModelConfig, build_model, encoder_state_dict,
                          timm_encoder)
from mixedae_core.losses import homologous_contrastive_loss, reconstruction_loss
from mixedae_core.mixing import draw_partition, mix_tokens
from mixedae_core.switches import canonical, resolve
from mixedae_core.attention import HomologousAttention, TopKAttention, per_image_cls_mask, topk_accuracy

TINY = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)  # N = 16 positions


def tiny(method="mixedae", **kw):
    return ModelConfig(method=method, **{**TINY, **kw})


def images(n, seed=0, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labelled_tokens(B, N):
    """tokens[b, n] = (b, n): after mixing, each token says which image and position it came from."""
    b, n = torch.meshgrid(torch.arange(B), torch.arange(N), indexing="ij")
    return torch.stack([b, n], dim=-1).float()


# ---------------------------------------------------------------- mixing
@pytest.mark.parametrize("G", [2, 4])
def test_compose_every_position_one_source_each_image_rN_positions(G):
    B, N = 4 * G, 16
    torch.manual_seed(0)
    sets = draw_partition(B // G, N, G)
    mixed, src, seq_of_image = mix_tokens(labelled_tokens(B, N), sets, "compose")
    assert mixed.shape == (B // G, N, 2) and src.shape == (B // G, N)
    assert torch.equal(mixed[..., 1], torch.arange(N).float().expand(B // G, N))  # positions are kept
    image = torch.arange(B // G).unsqueeze(1) * G + src
    assert torch.equal(mixed[..., 0], image.float())  # the token at p is image src[p]'s own patch p
    for row in src:
        assert torch.equal(torch.bincount(row, minlength=G), torch.full((G,), N // G))
    assert torch.equal(seq_of_image, torch.arange(B) // G)


def test_full_mode_every_patch_visible_exactly_once_per_group():
    G, B, N = 4, 8, 16
    torch.manual_seed(1)
    mixed, src, seq_of_image = mix_tokens(labelled_tokens(B, N), draw_partition(B // G, N, G), "full")
    assert mixed.shape == (B, N, 2) and torch.equal(seq_of_image, torch.arange(B))
    for group in range(B // G):
        seen = mixed[group * G:(group + 1) * G].reshape(-1, 2)
        pairs = {(int(b), int(n)) for b, n in seen}
        assert len(pairs) == G * N == seen.shape[0]  # no repeat, nothing missing
        assert {b for b, _ in pairs} == set(range(group * G, (group + 1) * G))
    for j in range(B):  # sequence j contains rN patches of its own image j
        assert (src[j] == j % G).sum() == N // G


def test_groups_get_different_partitions_and_seed_fixes_them():
    torch.manual_seed(0)
    a = draw_partition(8, 64, 4)
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 8))
    torch.manual_seed(0)
    assert torch.equal(a, draw_partition(8, 64, 4))
    model = build_model(tiny("naive"))
    x = images(8)
    torch.manual_seed(3)
    out1 = model(x)
    torch.manual_seed(3)
    out2 = model(x)
    assert torch.equal(out1.src, out2.src) and torch.equal(out1.loss, out2.loss)


def test_partition_noise_must_have_group_shape():
    with pytest.raises(ValueError, match="shape"):
        draw_partition(2, 16, 4, noise=torch.rand(3, 16))


# ---------------------------------------------------------------- homologous attention
def attention_pair(dim=32, heads=2):
    torch.manual_seed(0)
    ref = Attention(dim, heads, qkv_bias=True).eval()
    hom = HomologousAttention(dim, heads, qkv_bias=True).eval()
    hom.load_state_dict(ref.state_dict(), strict=True)  # same parameters, same names
    return ref, hom


def test_topk_with_all_tokens_equals_timm_attention():
    ref, hom = attention_pair()
    x = torch.randn(3, 17, 32)
    torch.testing.assert_close(hom(x, topk=17), ref(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(hom(x, topk=None), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("K", [1, 5, 9])
def test_each_patch_query_keeps_exactly_k_keys_and_cls_is_global(K):
    _, hom = attention_pair()
    _, attn, selection, _ = hom(torch.randn(2, 17, 32), topk=K, return_attention=True)
    assert torch.equal((attn[:, :, 1:] > 0).sum(-1), torch.full((2, 2, 16), K))
    assert torch.equal(selection.sum(-1), torch.full((2, 2, 16), K))
    assert (attn[:, :, 0] > 0).all()  # [CLS] query sees every token
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 17))


def test_topk_keeps_the_largest_logits():
    _, hom = attention_pair()
    x = torch.randn(1, 17, 32)
    _, global_attn, none_dropped, _ = hom(x, return_attention=True)
    assert none_dropped is None
    # softmax is monotone: the K largest logits = the K largest probs
    selection = torch.zeros_like(global_attn[:, :, 1:], dtype=torch.bool)
    selection.scatter_(-1, global_attn[:, :, 1:].topk(4, dim=-1).indices, True)
    assert torch.equal(hom(x, topk=4, return_attention=True).selection, selection)


# ---------------------------------------------------------------- unmixing and decoder
@pytest.mark.parametrize("mode", ["compose", "full"])
def test_decoder_never_sees_another_images_tokens(mode):
    """With an identity encoder (depth 0) image g's prediction depends on image g alone."""
    model = build_model(tiny("naive", depth=0, mix_mode=mode)).eval()
    x = images(8)
    noise = torch.rand(2, 16)
    y = x.clone()
    y[1] = torch.randn(3, 16, 16)  # image 1 shares group 0 with images 0, 2, 3
    with torch.no_grad():
        a, b = model(x, noise=noise), model(y, noise=noise)
    torch.testing.assert_close(a.pred[[0, 2, 3]], b.pred[[0, 2, 3]], rtol=0, atol=0)
    assert not torch.allclose(a.pred[1], b.pred[1])
    # Control: with a real (global-attention) encoder the neighbours do leak in; the check above can fail.
    leaky = build_model(tiny("naive", mix_mode=mode)).eval()
    with torch.no_grad():
        assert not torch.allclose(leaky(x, noise=noise).pred[0], leaky(y, noise=noise).pred[0])


@pytest.mark.parametrize("method,mode", [("mae", "compose"), ("naive", "compose"), ("naive", "full"),
                                         ("mixedae", "compose"), ("mixedae", "full")])
def test_output_one_reconstruction_per_image(method, mode):
    model = build_model(tiny(method, mix_mode=mode))
    out = model(images(8))
    N = 16
    assert out.pred.shape == (8, N, 4 * 4 * 3) and out.mask.shape == (8, N)
    assert torch.equal(out.mask.sum(1), torch.full((8,), float(N - N // 4)))  # 75 % hidden in every method
    rows = {"mae": 8, "compose": 2, "full": 8}["mae" if method == "mae" else mode]
    assert out.src.shape == (rows, N)
    if method != "mae":  # visible positions of image b are exactly its slot's positions in its sequence
        visible = out.src[out.seq_of_image] == (torch.arange(8) % 4).unsqueeze(1)
        assert torch.equal(out.mask, (~visible).float())


# ---------------------------------------------------------------- losses
def test_reconstruction_loss_is_maes_formula_and_ignores_visible_positions():
    target = torch.zeros(2, 4, 3)
    target[0, 1] = 2.0  # hidden: squared error 4 per pixel
    target[1, 3] = 1.0  # hidden: squared error 1
    target[0, 0] = 100.0  # visible: must not count
    mask = torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 1]])
    loss, per_image = reconstruction_loss(torch.zeros(2, 4, 3), target, mask)
    assert loss.item() == pytest.approx((4 + 0 + 0 + 1) / 4)
    torch.testing.assert_close(per_image, torch.tensor([2.0, 0.5]))


def test_model_loss_uses_hidden_positions_only():
    model = build_model(tiny("naive", norm_pix_loss=False)).eval()
    x = images(4)
    noise = torch.rand(1, 16)
    with torch.no_grad():
        out = model(x, noise=noise)
        from mixedae_core.losses import patchify
        target = patchify(x, 4)
        hidden = out.mask.bool()
        expected = ((out.pred - target) ** 2).mean(-1)[hidden].mean()
    torch.testing.assert_close(out.loss_rec, expected)


def supcon_reference(z, src, temperature):
    """Loop-based SupCon (Khosla et al., L_out) within each sequence."""
    losses = []
    for e in range(z.shape[0]):
        for i in range(z.shape[1]):
            others = [a for a in range(z.shape[1]) if a != i]
            positives = [p for p in others if src[e, p] == src[e, i]]
            denominator = torch.logsumexp(torch.stack([z[e, i] @ z[e, a] / temperature for a in others]), 0)
            losses.append(-sum(z[e, i] @ z[e, p] / temperature - denominator for p in positives) / len(positives))
    return torch.stack(losses).mean()


def test_supcon_matches_loop_reference():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(3, 8, 5), dim=-1)
    src = torch.stack([torch.randperm(8) % 4 for _ in range(3)])
    torch.testing.assert_close(homologous_contrastive_loss(z, src, 0.1), supcon_reference(z, src, 0.1))
    torch.testing.assert_close(homologous_contrastive_loss(z, src, 0.5), supcon_reference(z, src, 0.5))


def test_mixedae_total_loss_is_rec_plus_weighted_hc():
    model = build_model(tiny("mixedae", hc_weight=0.3))
    out = model(images(8))
    assert out.loss_hc > 0
    torch.testing.assert_close(out.loss, out.loss_rec + 0.3 * out.loss_hc)
    assert build_model(tiny("naive"))(images(8)).loss_hc == 0


# ---------------------------------------------------------------- parameters, export, diagnostics
@pytest.mark.parametrize("cfg", [dict(method="mae"), dict(method="naive"), dict(method="naive", mix_mode="full"),
                                 dict(method="mixedae"), dict(method="mixedae", mix_mode="full"),
                                 dict(method="mixedae", seg_embed="decoder"), dict(method="mixedae", seg_embed="none"),
                                 dict(method="mixedae", homologous_layers=(1,), topk=3),
                                 dict(method="mixedae", hc_form="features")])
def test_every_trainable_parameter_gets_a_gradient(cfg):
    model = build_model(tiny(**cfg))
    model(images(8)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_module_sets_per_method():
    names = lambda m: set(dict(build_model(tiny(m)).named_parameters()))
    mae, naive, mixedae = names("mae"), names("naive"), names("mixedae")
    assert mae == naive  # mixing adds no parameter
    assert mixedae - mae == {"seg_embed"}  # the attention-level homologous loss has no parameter
    features = set(dict(build_model(tiny("mixedae", hc_form="features")).named_parameters()))
    assert features - mae == {"seg_embed", "hc_head.0.weight", "hc_head.0.bias", "hc_head.2.weight", "hc_head.2.bias"}


def test_same_seed_same_shared_weights_in_every_method():
    """Paired comparisons: for one seed, MAE, naive and MixedAE start from the same shared weights."""
    models = {}
    for method in ("mae", "naive", "mixedae"):
        torch.manual_seed(0)
        models[method] = build_model(tiny(method, seg_embed="decoder") if method == "mixedae" else tiny(method)).state_dict()
    for name, w in models["mae"].items():
        assert torch.equal(w, models["naive"][name]) and torch.equal(w, models["mixedae"][name]), name


def test_weights_move_between_methods():
    mixedae = build_model(tiny("mixedae", hc_form="features"))
    mae = build_model(tiny("mae"))
    missing, unexpected = mae.load_state_dict(mixedae.state_dict(), strict=False)
    assert not missing and set(unexpected) == {k for k in mixedae.state_dict() if k.startswith(("seg_embed", "hc_head"))}


def test_topk_accuracy_diagnostic():
    model = build_model(tiny("mixedae")).eval()
    with torch.no_grad():
        out = model(images(8), diagnostics=True)
    assert out.topk_acc.shape == (2,) and ((0 <= out.topk_acc) & (out.topk_acc <= 1)).all()
    # K = all tokens keeps every key: the accuracy is the share of same-source pairs among the other
    # patches, (rN - 1) / (N - 1) = 3 / 15.
    everything = build_model(tiny("mixedae", topk=16)).eval()
    with torch.no_grad():
        out = everything(images(8), diagnostics=True)
    torch.testing.assert_close(out.topk_acc, torch.full((2,), 3 / 15))


def test_topk_accuracy_counts_kept_same_source_keys():
    src = torch.tensor([[0, 0, 1, 1]])
    selection = torch.zeros(1, 1, 4, 5, dtype=torch.bool)  # [E, H, patch queries, [CLS] + patch keys]
    selection[0, 0, 0, [0, 1, 2]] = True   # query 0 keeps [CLS], itself, patch 1 (same image)
    selection[0, 0, 1, [2, 3, 4]] = True   # query 1 keeps itself, patch 2, patch 3 (other image)
    selection[0, 0, 2, [1, 4]] = True      # query 2 keeps patch 0 (other), patch 3 (same)
    selection[0, 0, 3, [4]] = True         # query 3 keeps only itself
    # kept patch keys other than the query itself: q0 {1: same}, q1 {2, 3: other}, q2 {0: other, 3: same}
    assert topk_accuracy(selection, src).item() == pytest.approx(2 / 5)


def test_attention_maps_for_mixed_sequences_and_single_images():
    model = build_model(tiny("mixedae")).eval()
    with torch.no_grad():
        out = model(images(8), return_attention=True)
        feats, single = model.forward_features(images(3), return_attention=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 20, 20)  # G = 4 [CLS] + 16 patches
    assert ((out.attentions[0][:, :, 4:] > 0).sum(-1) == 4).all()  # TopK: rN = 4 keys per patch query, no [CLS]
    assert len(single) == 2 and single[0].shape == (3, 2, 17, 17) and (single[0][:, :, 1:, 1:] > 0).all()  # global
    assert feats.shape == (3, 17, 32)
    with torch.no_grad():
        assert model(images(8)).attentions is None  # returned on request only, never kept on the modules


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(method="mixed"), "method"),
    (dict(method="mixedae", mix_ratio=0.3), "mix_ratio"),
    (dict(method="naive", mix_ratio=1.0), "mix_ratio"),
    (dict(method="naive", mix_ratio=1 / 3), "divisible"),        # 16 positions, G = 3
    (dict(method="mixedae", topk=0), "topk"),
    (dict(method="mixedae", topk=17), "topk"),                     # 16 patch keys
    (dict(method="mixedae", topk=18, cls_per_image=False), "topk"),  # 16 patches + the shared [CLS]
    (dict(method="mixedae", topk="all"), "topk"),
    (dict(method="mae", topk=5), "MixedAE switch"),
    (dict(method="mae", topk="global"), "MixedAE switch"),
    (dict(method="naive", seg_embed="encoder"), "MixedAE switch"),
    (dict(method="mae", hc_weight=0.5), "MixedAE switch"),         # cannot change MAE: refused, not a new run
    (dict(method="naive", hc_form="features"), "MixedAE switch"),
    (dict(method="mae", mix_mode="full"), "does not mix"),
    (dict(method="mixedae", mix_mode="half"), "mix_mode"),
    (dict(method="mixedae", seg_embed="both"), "seg_embed"),
    (dict(method="mixedae", homologous_layers=(2,)), "homologous_layers"),
    (dict(method="mae", img_size=18), "multiple"),
])
def test_bad_config_raises_with_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_batch_not_divisible_by_group_raises():
    with pytest.raises(ValueError, match="divisible"):
        build_model(tiny("naive"))(images(6))
    with pytest.raises(ValueError, match="expected images"):
        build_model(tiny("naive"))(images(4, size=32))


def test_config_replace_revalidates():
    cfg = tiny("mixedae", topk=5)
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, method="mae")


def test_topk_only_in_homologous_layers():
    model = build_model(tiny("mixedae", homologous_layers=(1,), topk=3)).eval()
    with torch.no_grad():
        out = model(images(8), return_attention=True, diagnostics=True)
    first, second = out.attentions
    assert (first[:, :, 4:, 4:] > 0).all()  # global between patches
    assert ((second[:, :, 4:] > 0).sum(-1) == 3).all()
    assert out.topk_acc.shape == (1,)


# ---------------------------------------------------------------- homologous recognition
def attention_loss_reference(logits, src):
    """Loop over layers, sequences, heads and queries: -log(share of the softmax over the other patch keys
    that falls on the query's own image)."""
    losses = []
    for layer in logits:
        E, H, N, _ = layer.shape
        for e in range(E):
            for h in range(H):
                for i in range(N):
                    others = [j for j in range(N) if j != i]
                    p = torch.softmax(torch.stack([layer[e, h, i, 1 + j] for j in others]), 0)
                    losses.append(-torch.log(sum(p[a] for a, j in enumerate(others) if src[e, j] == src[e, i])))
    return torch.stack(losses).mean()


def same_image_of(src):
    return (src.unsqueeze(2) == src.unsqueeze(1)).unsqueeze(1).float()


def attention_loss(q, k, src, topk=None):
    """The attention-form loss TopKAttention computes beside the attention (v does not enter it)."""
    return TopKAttention.apply(q, k, torch.randn_like(q), 1.0, topk, same_image_of(src))[1]


def test_attention_loss_matches_loop_reference_and_its_references():
    torch.manual_seed(0)
    src = torch.stack([torch.randperm(8) % 4 for _ in range(2)])
    q, k = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    logits = q @ k.transpose(-2, -1)
    for topk in (None, 3):  # the selection does not enter the loss
        torch.testing.assert_close(attention_loss(q, k, src, topk), attention_loss_reference([logits[:, :, 1:]], src))
    refs = resolve(tiny("mixedae")).recognition_references()  # N = 16, G = 4, rN = 4
    src16 = torch.stack([torch.arange(16) % 4] * 2)
    uniform = attention_loss(torch.zeros(2, 3, 17, 4), torch.randn(2, 3, 17, 4), src16)
    torch.testing.assert_close(uniform.item(), refs["loss_hc_chance"])
    assert refs["loss_hc_chance"] == pytest.approx(-math.log(3 / 15)) and refs["loss_hc_perfect"] == 0
    # queries and keys that are the one-hot of their image (x 7): own-image logits 49, others 0
    one_hot = torch.cat([torch.zeros(2, 1, 4), 7 * F.one_hot(src, 4).float()], 1).unsqueeze(1).expand(2, 3, 9, 4)
    assert attention_loss(one_hot, one_hot, src) < 1e-6


def test_topk_attention_backward_matches_autograd():
    """The written-out backward against numerical differences (float64), with and without selection and loss,
    and the loss's own shift: a [CLS] key 200 above the patch keys must not underflow them."""
    torch.manual_seed(0)
    src = torch.stack([torch.randperm(8) % 4 for _ in range(2)])
    q, k, v = (torch.randn(2, 2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    for topk, same in [(3, same_image_of(src)), (None, same_image_of(src)), (3, None), (9, None)]:
        def fn(q, k, v):
            out, loss, _, _ = TopKAttention.apply(q, k, v, 0.5, topk, same)
            return out.sum() * 0.3 + (loss if loss is not None else 0)
        assert torch.autograd.gradcheck(fn, (q, k, v))
    q, k, v = (torch.randn(2, 2, 9, 4) for _ in range(3))
    q[..., 0], k[:, :, 0, 0] = 10.0, 100.0  # every query's [CLS] logit 500 above its patch logits
    out, loss, probs, _ = TopKAttention.apply(q, k, v, 0.5, 3, same_image_of(src))
    assert torch.isfinite(loss) and torch.isfinite(out).all()
    torch.testing.assert_close(loss, attention_loss_reference([(0.5 * q @ k.transpose(-2, -1))[:, :, 1:]], src))


def test_topk_attention_under_bf16_autocast_keeps_input_dtypes():
    torch.manual_seed(0)
    src = torch.stack([torch.randperm(8) % 4 for _ in range(2)])
    q, k, v = (torch.randn(2, 2, 9, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss, probs, _ = TopKAttention.apply(q, k, v, 0.5, 3, same_image_of(src))
    (out.float().sum() + loss).backward()
    assert probs.dtype == loss.dtype == torch.float32
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_identical_projections_sit_at_the_features_collapse_value():
    refs = resolve(tiny("mixedae", hc_form="features")).recognition_references()
    src = torch.stack([torch.arange(16) % 4] * 2)
    z = F.normalize(torch.ones(2, 16, 8), dim=-1)  # every patch projected to the same point
    torch.testing.assert_close(homologous_contrastive_loss(z, src, 0.1).item(), refs["loss_hc_chance"])
    assert refs["loss_hc_chance"] == pytest.approx(math.log(15)) and refs["loss_hc_perfect"] == pytest.approx(math.log(3))


def test_homologous_keys_that_dominate_the_logits_give_topk_accuracy_1():
    """A one-block model whose queries and keys read only a huge segment embedding: TopK keeps own-image keys.
    K = rN: exactly an image's own keys (with K = rN + 1 the last key may come from another image)."""
    c = tiny("mixedae", depth=1, embed_dim=32, num_heads=1, topk=4)
    model = build_model(c).eval()
    D = c.embed_dim
    with torch.no_grad():
        model.seg_embed.copy_(1e3 * torch.eye(resolve(c).group_size, D))  # orthogonal, dwarfing patch + position
        qkv = model.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.weight[:D].copy_(torch.eye(D))      # q = normed token
        qkv.weight[D:2 * D].copy_(torch.eye(D))  # k = normed token
        out = model(images(8), diagnostics=True)
    assert out.topk_acc.item() > 0.99
    with torch.no_grad():
        model.seg_embed.zero_()
        chance = model(images(8), diagnostics=True).topk_acc.item()
    assert chance < 0.9


def test_per_image_cls_mask_on_a_hand_worked_sequence():
    """A [CLS] query reads its own image's patches (and itself only with reads_itself); a patch query reads every
    patch, no [CLS]."""
    src = torch.tensor([[0, 1, 1, 0]])
    allowed = per_image_cls_mask(src, None, 2)[0, 0].int()  # tokens: [CLS]0, [CLS]1, p0 (0), p1 (1), p2 (1), p3 (0)
    assert allowed.tolist() == [[0, 0, 1, 0, 0, 1],
                                [0, 0, 0, 1, 1, 0],
                                [0, 0, 1, 1, 1, 1],
                                [0, 0, 1, 1, 1, 1],
                                [0, 0, 1, 1, 1, 1],
                                [0, 0, 1, 1, 1, 1]]
    with_itself = per_image_cls_mask(src, None, 2, reads_itself=True)[0, 0].int()
    assert with_itself[:2].tolist() == [[1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]]
    assert torch.equal(with_itself[2:], allowed[2:])
    full = per_image_cls_mask(src.expand(2, -1), torch.tensor([0, 1]), 1)[:, 0].int()  # one [CLS] per sequence
    assert full[:, 0].tolist() == [[0, 1, 0, 0, 1], [0, 0, 1, 1, 0]]
    assert (full[:, 1:, 0] == 0).all() and (full[:, 1:, 1:] == 1).all()


def read_pattern(probs: torch.Tensor, n_cls: int) -> dict:
    """Which kinds of keys each kind of query attends to ([E, H, T, T] probabilities): reads of the [CLS] by
    patches, of itself by a [CLS], and of patches by a [CLS] and by patches (True: some weight, in every row)."""
    cls_rows, patch_rows = probs[:, :, :n_cls], probs[:, :, n_cls:]
    return {"patch reads a [CLS]": bool((patch_rows[..., :n_cls] > 0).any()),
            "[CLS] reads itself": bool((cls_rows[..., :n_cls].diagonal(dim1=-2, dim2=-1) > 0).any()),
            "[CLS] reads patches": bool((cls_rows[..., n_cls:] > 0).any(-1).all()),
            "patch reads patches": bool((patch_rows[..., n_cls:] > 0).any(-1).all())}


@pytest.mark.parametrize("method,mode,reads_itself", [("mae", "compose", False), ("naive", "compose", False),
                                                      ("mixedae", "compose", False), ("mixedae", "full", False),
                                                      ("mixedae", "compose", True)])
def test_evaluation_reads_as_pretraining_did(method, mode, reads_itself):
    """On one unmixed image, forward_features and the timm export give each kind of token the reads that
    pre-training gave it: with a per-image [CLS], no patch reads it, and it reads patches (itself only with
    `cls_reads_itself`); MAE's [CLS] reads and is read by everything in both."""
    c = tiny(method, mix_mode=mode, cls_reads_itself=reads_itself, **({"topk": 16} if method == "mixedae" else {}))
    model = build_model(c).eval()
    with torch.no_grad():
        pretraining = model(images(8), return_attention=True).attentions
        _, evaluation = model.forward_features(images(3), return_attention=True)
    for pre, ev in zip(pretraining, evaluation):
        assert read_pattern(pre, resolve(c).n_cls) == read_pattern(ev, 1)
    per_image = method != "mae"
    assert read_pattern(evaluation[0], 1) == {"patch reads a [CLS]": not per_image,
                                              "[CLS] reads itself": reads_itself or not per_image,
                                              "[CLS] reads patches": True, "patch reads patches": True}


def test_timm_export_computes_what_the_encoder_computes():
    """The export applies the pre-training mask by itself; a stock timm ViT needs it passed, and without it the
    patches read the [CLS], a path no weight of a per-image [CLS] model was trained for."""
    model = build_model(tiny("mixedae")).eval()
    c = model.config
    stock = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=c.img_size, patch_size=c.patch_size,
                              in_chans=c.in_chans, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
                              num_classes=0).eval()
    stock.load_state_dict(encoder_state_dict(model), strict=True)
    x = images(4)
    with torch.no_grad():
        ours = model.forward_features(x)
        torch.testing.assert_close(timm_encoder(model).forward_features(x), ours, rtol=0, atol=1e-6)
        torch.testing.assert_close(stock.forward_features(x, attn_mask=model.unmixed_attn_mask(c.num_patches)), ours,
                                   rtol=0, atol=1e-6)
        assert (stock.forward_features(x) - ours).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_with_perfect_selection_each_image_is_reconstructed_from_itself_alone(mode):
    """docs/METHOD.md, section 7: with homologous attention that keeps exactly the query's own image in every
    block, image g's prediction depends on image g alone, through the encoder and the decoder, because its
    [CLS] is its own. A shared [CLS] (cls_per_image=False) carries the other images to it: the control."""
    leaks = {}
    for per_image in (True, False):
        c = tiny("mixedae", embed_dim=32, num_heads=1, topk=4, mix_mode=mode, cls_per_image=per_image)
        model = build_model(c).eval()
        D = c.embed_dim
        with torch.no_grad():
            model.seg_embed.copy_(1e3 * torch.eye(resolve(c).group_size, D))  # orthogonal, dwarfing patch + position
            model.cls_token.zero_()
            for blk in model.blocks:  # q = k = v = the normed token: logits follow the segment embedding
                blk.attn.qkv.weight.copy_(torch.eye(D).repeat(3, 1))
                blk.attn.qkv.bias.zero_()
        x = images(8).requires_grad_()
        out = model(x, noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(1)), diagnostics=True)
        assert out.topk_acc.min().item() == 1.0  # the selection is perfect in every block
        out.pred[1].sum().backward()  # image 1 (slot 1) shares its group with images 0, 2 and 3
        leaks[per_image] = x.grad[[0, 2, 3]].abs().max().item()
        assert x.grad[1].abs().max() > 0 and x.grad[4:].abs().max() == 0
    assert leaks[True] == 0 and leaks[False] > 0


def test_mixedae_without_its_parts_is_naive_mixing():
    """K = every token, no segment embedding, no homologous loss: MixedAE computes what naive mixing computes."""
    torch.manual_seed(0)
    naive = build_model(tiny("naive"))
    for form in ("attention", "features"):
        torch.manual_seed(0)
        stripped = build_model(tiny("mixedae", topk=16, seg_embed="none", hc_weight=0.0, hc_form=form))
        x, noise = images(8), torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
        a, b = naive(x, noise=noise), stripped(x, noise=noise)
        assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


def test_global_attention_is_named_and_is_the_k_that_keeps_every_key():
    """topk=None is the default K (rN); 'global' is every key: the same model as K = the keys a patch may read."""
    default, named, every_key = tiny("mixedae"), tiny("mixedae", topk="global"), tiny("mixedae", topk=16)
    assert resolve(default).kept_keys == 4 and resolve(named).kept_keys is None and resolve(every_key).kept_keys is None
    assert canonical(named) == canonical(every_key) != canonical(default)
    x, noise = images(8), torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = build_model(named)(x, noise=noise)
    torch.manual_seed(0)
    b = build_model(every_key)(x, noise=noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


def test_topk_names_one_k_whatever_its_type_and_the_shared_cls_counts_as_a_key():
    shared = tiny("mixedae", topk="global", cls_per_image=False)
    assert resolve(shared).kept_keys is None and canonical(shared).topk == 17  # 16 patches + the shared [CLS]
    assert canonical(tiny("mixedae", topk=np.int64(5))) == canonical(tiny("mixedae", topk=5))
    for bad in (True, 2.5, np.int64(0), np.int64(17)):
        with pytest.raises(ValueError, match="topk"):
            tiny("mixedae", topk=bad)


def test_each_method_is_built_by_its_own_class():
    with pytest.raises(ValueError, match="build_model"):
        MaskedAutoencoderViT(tiny("mixedae"))
    with pytest.raises(ValueError, match="build_model"):
        MixedAutoencoderViT(tiny("mae"))


def test_no_homologous_layer_means_no_attention_form_loss():
    model = build_model(tiny("mixedae", homologous_layers=()))
    out = model(images(8))
    assert model.switches.loss_form is None and out.loss_hc == 0 and torch.equal(out.loss, out.loss_rec)


def test_without_homologous_loss_neither_form_builds_or_computes_one():
    """hc_weight = 0: no projection head, loss_hc 0, and the loss's other switches cannot change the model."""
    torch.manual_seed(0)
    attention = build_model(tiny("mixedae", hc_weight=0.0))
    torch.manual_seed(0)
    features = build_model(tiny("mixedae", hc_weight=0.0, hc_form="features", hc_temperature=0.5))
    assert features.hc_head is None and resolve(tiny("mixedae", hc_form="features")).loss_form == "features"
    assert canonical(tiny("mixedae", hc_weight=0.0, hc_form="features")) == canonical(tiny("mixedae", hc_weight=0.0))
    x, noise = images(8), torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    a, b = attention(x, noise=noise), features(x, noise=noise)
    assert torch.equal(a.loss, b.loss) and b.loss_hc == 0 and torch.equal(b.loss, b.loss_rec)


def test_mae_is_the_plain_model_and_mixing_what_is_added():
    """MAE builds no mixing module; a mixing model holds MAE's modules under MAE's names, and its own."""
    mae, mixed = build_model(tiny("mae")), build_model(tiny("mixedae", hc_form="features"))
    assert type(mae) is MaskedAutoencoderViT and isinstance(mixed, MaskedAutoencoderViT)
    extra = set(mixed.state_dict()) - set(mae.state_dict())
    assert set(mae.state_dict()) < set(mixed.state_dict()) and {k.split(".")[0] for k in extra} == {"seg_embed", "hc_head"}


def test_recognition_warnings_flag_chance_and_collapse_only():
    from mixedae_core.train import recognition_warnings
    features = tiny("mixedae", hc_form="features")
    refs = resolve(features).recognition_references()
    chance, collapsed = refs["topk_acc_chance"], refs["loss_hc_chance"]
    both = recognition_warnings(features, collapsed, [chance, chance])
    assert len(both) == 2 and "at chance" in both[0] and "chance value" in both[1]
    assert recognition_warnings(features, refs["loss_hc_perfect"], [0.9, 0.8]) == []
    assert recognition_warnings(tiny("naive"), 9.9, None) == []
    assert len(recognition_warnings(tiny("mixedae"), 0.1, [chance])) == 1  # attention form: loss fine, TopK not
    # K = every key a patch may read (N = 16) keeps all: TopK accuracy is chance by construction, not a fault
    assert recognition_warnings(tiny("mixedae", topk=16), 0.1, [chance]) == []
