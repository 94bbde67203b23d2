"""Known-answer tests of the measurements behind the notebooks' claims: content floors and the
mutual-information dose-response."""
from types import SimpleNamespace

import pytest
import torch

from mixedae_core.config import make_config
from mixedae_core.evaluate import (at_image_size, content_floor, dependence_layouts, dependence_scores, grouping_chance,
                                   mixed_grouping, own_image_attention, shared_position_loss)
from mixedae_core.losses import normalize_patches, patchify, reconstruction_loss
from mixedae_core.mixing import draw_partition
from mixedae_core.model import build_model
from mixedae_core.switches import resolve


def smoke_model(method, seed=0):
    torch.manual_seed(seed)
    return build_model(make_config("smoke", method=method)).eval()


def noise_for(n_images, seed=0):
    return torch.rand(n_images // 4, 16, generator=torch.Generator().manual_seed(seed))


def test_a_model_blind_to_its_input_scores_exactly_its_floor():
    imgs = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for method in ("mae", "naive", "mixedae"):
        model = smoke_model(method)
        with torch.no_grad():  # patch tokens carry position only: the prediction cannot depend on the image
            model.patch_embed.proj.weight.zero_()
            model.patch_embed.proj.bias.zero_()
        loss = shared_position_loss(model, imgs, noise_for(16)).loss_per_image
        torch.testing.assert_close(content_floor(model, imgs, noise_for(16)), loss, rtol=0, atol=1e-6)
        seeing = smoke_model(method)
        assert not torch.allclose(content_floor(seeing, imgs, noise_for(16)),
                                  shared_position_loss(seeing, imgs, noise_for(16)).loss_per_image)


def test_the_floor_of_a_blank_image_is_its_own_loss():
    blank = torch.zeros(8, 3, 16, 16)
    model = smoke_model("mixedae")
    torch.testing.assert_close(content_floor(model, blank, noise_for(8)),
                               shared_position_loss(model, blank, noise_for(8)).loss_per_image)


class CopyNeighbour(torch.nn.Module):
    """A hand-built mixing model: each hidden position is predicted by the patch that the group member
    showing that position has there. It reads its neighbours completely and nothing else."""

    mixes = True

    def __init__(self):
        super().__init__()
        self.config = make_config("smoke", method="naive")
        self.switches = resolve(self.config)

    def forward(self, imgs, noise):
        G, N = self.switches.group_size, self.config.num_patches
        target = normalize_patches(patchify(imgs, self.config.patch_size))
        sets = draw_partition(len(imgs) // G, N, G, noise)  # [groups, N]: the slot that shows each position
        slot = torch.arange(len(imgs)) % G
        shown_by = sets[torch.arange(len(imgs)) // G]
        mask = (shown_by != slot.unsqueeze(1)).float()
        source = (torch.arange(len(imgs)) // G * G).unsqueeze(1) + shown_by  # the image showing each position
        pred = target[source, torch.arange(N)]
        return SimpleNamespace(loss_per_image=reconstruction_loss(pred, target, mask)[1], pred=pred, mask=mask)


def layouts(m=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(m * 8, 3, 16, 16, generator=g)
    labels = torch.arange(m * 8) % 4
    return dependence_layouts(images, labels, m, 4, g), noise_for(4 * m, seed)


def test_dependence_of_a_model_that_copies_its_neighbours():
    (anchors, neighbours), noise = layouts()
    scores = dependence_scores(CopyNeighbour(), anchors, neighbours, noise)
    assert scores["loss_same_image"] == 0  # the neighbours show the anchor itself: a perfect copy
    assert scores["reliance_same_image"] < -0.5
    assert abs(scores["reliance_random"]) < 0.05 * abs(scores["reliance_same_image"])  # zero in expectation
    # but every loss and prediction moves: two independent unit-variance patches differ by sqrt(2) in norm
    assert scores["sensitivity"] > 0.05 and 1.2 < scores["pred_change"] < 1.6
    assert scores["reliance_same_image"] < scores["reliance_views"] < scores["reliance_random"] + 0.05


def test_mae_sees_no_neighbour_and_the_random_layout_cancels_for_mixing():
    (anchors, neighbours), noise = layouts(16)
    mae = dependence_scores(smoke_model("mae"), anchors, neighbours, noise)
    assert all(mae[k] == 0 for k in mae if k.startswith("reliance_") or k in ("sensitivity", "pred_change"))
    naive = dependence_scores(smoke_model("naive"), anchors, neighbours, noise)
    assert naive["sensitivity"] > 0 and naive["pred_change"] > 0
    torch.manual_seed(0)  # no attention between tokens: mixing alone cannot carry a neighbour's content
    blind = dependence_scores(build_model(make_config("smoke", method="naive", depth=0)).eval(), anchors, neighbours, noise)
    assert all(abs(blind[k]) < 1e-6 for k in blind if k.startswith("reliance_") or k in ("sensitivity", "pred_change"))
    assert mae["floor"] > 0 and naive["floor"] > 0


def test_dependence_layouts_hold_what_they_say():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(120.0).view(120, 1, 1, 1).expand(120, 1, 8, 8).clone()  # image i is filled with i
    labels = torch.arange(120) % 5
    anchors, n = dependence_layouts(images, labels, 8, 4, g)
    ids = {k: v[..., 0, 0, 0].long() for k, v in n.items() if k != "views"}
    anchor_ids = anchors[:, 0, 0, 0].long()
    assert all(v.shape == (8, 3) for v in ids.values()) and n["views"].shape == (8, 3, 1, 8, 8)
    assert torch.equal(ids["same_image"], anchor_ids.unsqueeze(1).expand(8, 3))
    assert (labels[ids["class"]] == labels[anchor_ids].unsqueeze(1)).all()
    used = torch.cat([ids["unrelated"].flatten(), ids["random"].flatten(), ids["class"].flatten()])
    assert not set(anchor_ids.tolist()) & set(used.tolist())
    assert not set(ids["unrelated"].flatten().tolist()) & set(ids["random"].flatten().tolist())


def test_the_encoder_at_another_image_size_is_the_same_encoder():
    model = build_model(make_config("smoke", method="mixedae")).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(at_image_size(model, 16).forward_features(x), model.forward_features(x))
    assert at_image_size(model, 24).forward_features(torch.randn(2, 3, 24, 24)).shape == (2, 1 + 36, 32)


# ------------------------------------------------------------------------------ grouping on mixed inputs
def test_own_image_attention_at_chance_at_one_and_at_zero():
    src = torch.tensor([[0, 0, 1, 1, 0, 1]])  # two images, three patches each; one [CLS] first
    T = 7
    uniform = torch.full((1, 1, T, T), 1 / T)
    assert own_image_attention(uniform, src).item() == pytest.approx((3 - 1) / (6 - 1))  # chance: (rN-1)/(N-1)
    same = (src[0, :, None] == src[0, None, :]).float()
    own_only = torch.zeros(1, 1, T, T)
    own_only[0, 0, 1:, 1:] = same  # incl. itself, which is left out
    assert own_image_attention(own_only, src).item() == pytest.approx(1.0)
    other_only = torch.zeros(1, 1, T, T)
    other_only[0, 0, 1:, 1:] = 1 - same  # a map that copies the other image
    other_only[0, 0, 1:, 0] = 5.0  # mass on the [CLS] key does not count either way
    assert own_image_attention(other_only, src).item() == 0.0


def segment_following_model():
    """A one-block MixedAE whose tokens are their segment vectors alone (patch and position embeddings zeroed)
    and whose attention logits are their dot products: it groups by the segment label and nothing else."""
    model = build_model(make_config("smoke", method="mixedae", depth=1, num_heads=1, embed_dim=32)).eval()
    D = model.config.embed_dim
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
        model.seg_embed.copy_(torch.eye(4, D) * 4)
        model.blocks[0].attn.qkv.weight.copy_(torch.cat([torch.eye(D) * 3] * 3))
        model.blocks[0].attn.qkv.bias.zero_()
    return model


def test_grouping_is_chance_without_the_label_and_near_one_with_it():
    model = segment_following_model()
    images = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    noise = noise_for(8)
    chance = grouping_chance(model.config)
    assert mixed_grouping(model, images, "synthetic", noise) == [pytest.approx(chance)]  # every token alike
    assert mixed_grouping(model, images, "synthetic", noise, segments=True)[0] > 0.99


def test_grouping_of_mae_is_measured_on_the_same_groups():
    model = smoke_model("mae")
    images = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    scores = mixed_grouping(model, images, "synthetic", noise_for(8))
    assert len(scores) == model.config.depth and all(0 <= s <= 1 for s in scores)


def test_grouping_gives_a_per_image_cls_model_the_cls_structure_it_was_trained_with():
    """Its patches never read a [CLS] in pre-training, so they read none here either: a [CLS] token made
    different changes nothing for them, where MAE's patches, which read their [CLS], are moved."""
    images = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    for method, moved in (("mixedae", False), ("mae", True)):
        model = smoke_model(method)
        before = mixed_grouping(model, images, "synthetic", noise_for(8))
        with torch.no_grad():
            model.cls_token.copy_(10 * torch.randn(model.cls_token.shape, generator=torch.Generator().manual_seed(1)))
        assert (mixed_grouping(model, images, "synthetic", noise_for(8)) != before) == moved, method
