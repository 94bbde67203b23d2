"""Our `mae` method against outputs of the unmodified official MAE code (shared/fixtures)."""
import pytest
import timm
import torch

from mixedae_core import ModelConfig, build_mae, build_model, encoder_state_dict, timm_encoder


def mae_kwargs(golden):
    cfg = dict(golden["config"])
    assert cfg.pop("layer_norm_eps") == 1e-6  # ours is fixed at MAE's 1e-6
    cfg.pop("mask_ratio")                      # a forward argument, not a constructor one
    return cfg


def test_fresh_position_embeddings_equal_official(golden):
    model = build_mae(**mae_kwargs(golden))  # checked before loading weights, which would overwrite them
    assert torch.equal(model.pos_embed, golden["state_dict"]["pos_embed"])
    assert torch.equal(model.decoder_pos_embed, golden["state_dict"]["decoder_pos_embed"])


def test_same_seed_gives_official_init(golden):
    torch.manual_seed(golden["provenance"]["seed_init"])
    model = build_mae(**mae_kwargs(golden))
    ours, theirs = model.state_dict(), golden["state_dict"]
    assert list(ours) == list(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def test_official_checkpoint_loads_strict(golden, tmp_path):
    torch.save({"model": golden["state_dict"]}, tmp_path / "checkpoint.pth")
    model = build_mae(**mae_kwargs(golden))
    model.load_state_dict(torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"], strict=True)


def loaded(model, golden):
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


def test_forward_matches_official(golden):
    model = loaded(build_mae(**mae_kwargs(golden)), golden)
    with torch.no_grad():
        loss, pred, mask = model(golden["imgs"], mask_ratio=golden["mask_ratio"], noise=golden["noise"])
    assert torch.equal(mask, golden["mask"])
    torch.testing.assert_close(pred, golden["pred"], rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, golden["loss"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_model_family_mae_matches_official(golden, flip):
    """`build_model(ModelConfig(method='mae'))` is the same model, with either norm_pix_loss setting."""
    kwargs = mae_kwargs(golden)
    if flip:
        kwargs["norm_pix_loss"] = not kwargs["norm_pix_loss"]
    model = loaded(build_model(ModelConfig(method="mae", mask_ratio=golden["mask_ratio"], **kwargs)), golden)
    with torch.no_grad():
        out = model(golden["imgs"], noise=golden["noise"])
    assert torch.equal(out.mask, golden["mask"])
    assert torch.equal(out.ids_restore, golden["ids_restore"])
    torch.testing.assert_close(out.pred, golden["pred"], rtol=0, atol=1e-5)
    expected = golden["loss_with_other_norm_pix_loss"] if flip else golden["loss"]
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)
    assert out.loss_hc == 0 and torch.equal(out.loss_rec, out.loss)


def test_encoder_exports_to_stock_timm_vit(golden):
    model = loaded(build_mae(**mae_kwargs(golden)), golden)
    c = model.config
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=c.img_size, patch_size=c.patch_size,
                            in_chans=c.in_chans, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
                            num_classes=0).eval()
    vit.load_state_dict(encoder_state_dict(model), strict=True)
    with torch.no_grad():
        ours = model.forward_features(golden["imgs"])
        torch.testing.assert_close(vit.forward_features(golden["imgs"]), ours, rtol=0, atol=1e-6)
        torch.testing.assert_close(timm_encoder(model).eval().forward_features(golden["imgs"]), ours, rtol=0, atol=1e-6)
