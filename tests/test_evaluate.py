"""Evaluators on data where the answer is known, and evaluation of whole runs."""
import dataclasses
import json

import pytest
import torch

from mixedae_core.lab.cli import main
from mixedae_core.config import EvalConfig, make_config
from mixedae_core.data import make_synthetic
from mixedae_core.lab import runs as runs_module
from mixedae_core.lab.runs import baselines_path, evaluate_run, export_record, record_is_current, records_control
from mixedae_core.evaluate import (CONTROL, attention_map, eval_splits, shared_position_loss, knn_accuracy,
                                   linear_probe_accuracy, object_awareness, supervised_control)
from mixedae_core.model import build_model
from mixedae_core.objects import foreground_patches, map_baseline_scores
from mixedae_core.train import train


def blobs(n, dim=16, classes=4, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


def test_knn_with_k1_on_the_training_set_is_perfect():
    x, y = torch.randn(200, 8), torch.randint(0, 5, (200,))
    assert knn_accuracy(x, y, x, y, k=1) == 1.0


def test_knn_on_clusters_and_on_noise():
    x, y = blobs(400)
    xt, yt = blobs(200, seed=1)
    assert knn_accuracy(x, y, xt, yt, k=20) > 0.99
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(x, shuffled, xt, yt, k=20) < 0.5  # labels carry no information: near chance (0.25)


def test_linear_probe_separable_and_unlearnable():
    x, y = blobs(600, classes=3)
    xt, yt = blobs(300, classes=3, seed=1)
    assert linear_probe_accuracy(x, y, xt, yt) > 0.99
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 3, generator=g)
    h = torch.randn(500, 32, generator=g)
    separable = (h @ w).argmax(1)  # separable by construction: converged L-BFGS fits the training set exactly
    assert linear_probe_accuracy(h, separable, h, separable, l2=0) == 1.0
    random_y = torch.randint(0, 3, (600,), generator=g)
    assert linear_probe_accuracy(x, random_y, xt, yt) < 0.5  # labels unrelated to features: near chance


def test_attention_maps_and_object_awareness_on_a_model():
    model = build_model(make_config("smoke", method="mixedae")).eval()
    data = make_synthetic(12, img_size=16)
    images = data.images.float() / 255
    cls = attention_map(model, images, layer=-1)
    assert cls.shape == (12, 2, 4, 4) and (cls.flatten(2).sum(-1) <= 1 + 1e-5).all()
    _, attentions = model.forward_features(images, return_attention=True)
    torch.testing.assert_close(attention_map(model, images, layer=0, query=5).flatten(2), attentions[0][:, :, 6, 1:])
    scores = object_awareness(model, data.images, foreground_patches(data.images, 4), "synthetic")
    assert scores.shape == (12,) and ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_shared_position_loss_hides_the_same_positions_in_every_method(mode):
    images = make_synthetic(8, img_size=16).images.float() / 255
    noise = torch.rand(2, 16)
    outs = {m: shared_position_loss(build_model(make_config("smoke", method=m, **({} if m == "mae" else {"mix_mode": mode}))).eval(),
                                    images, noise, 4, mode)
            for m in ("mae", "naive", "mixedae")}
    assert torch.equal(outs["mae"].mask, outs["naive"].mask) and torch.equal(outs["mae"].mask, outs["mixedae"].mask)
    assert torch.equal(outs["mae"].mask.sum(1), torch.full((8,), 12.0))
    with pytest.raises(ValueError, match="mode"):
        shared_position_loss(build_model(make_config("smoke", method="naive")), images, noise, 4, "full")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(make_config("smoke", method="mixedae", synthetic_size=128), run, progress=False)
    return run


def test_evaluate_run_writes_and_caches_eval_json(smoke_run):
    ec = EvalConfig(batch_size=64)
    result = evaluate_run(smoke_run, ec, progress=False)
    saved = json.loads((smoke_run / "eval.json").read_text())
    assert saved["scores"] == result["scores"] and saved["config"]["method"] == "mixedae"
    assert {"commit", "device", "date"} <= set(saved["provenance"])
    for name in ("encoder", "random_init"):
        assert {"knn_cls", "knn_mean", "probe_cls", "probe_mean", "object_iou"} <= set(result["scores"][name])
    assert {"knn_pixels", "probe_pixels"} <= set(result["scores"]["raw_pixels"])
    pretext = {k for k in result["scores"]["encoder"] if k.startswith(("shared_loss_", "floor_", "dose_"))}
    assert {"shared_loss_random", "floor_class", "dose_reliance_same_image", "dose_pred_change"} <= pretext
    assert all(0 <= v <= 1 for s in result["scores"].values() for k, v in s.items()  # accuracies and IoUs
               if not k.endswith("_images") and k not in pretext and k != "cls_self_attention")
    assert all(0 <= v <= 1 for v in result["scores"]["encoder"]["cls_self_attention"])
    assert not pretext & set(result["scores"]["random_init"])
    assert {"object_iou", "object_iou_translated", "object_iou_cluttered"} <= set(result["scores"]["centre prior map"])
    assert result["scores"]["encoder"]["shared_loss_random"] > 0
    assert len(list((smoke_run.parent / "baselines").glob("*.json"))) == 1  # shared by every run of these sizes
    stamp = (smoke_run / "eval.json").stat().st_mtime_ns
    evaluate_run(smoke_run, ec, progress=False)
    assert (smoke_run / "eval.json").stat().st_mtime_ns == stamp  # cached
    evaluate_run(smoke_run, EvalConfig(batch_size=64, knn_k=5), progress=False)
    assert json.loads((smoke_run / "eval.json").read_text())["eval"]["knn_k"] == 5  # another recipe: recomputed


def test_evaluate_cli(smoke_run, capsys, tmp_path):
    main(["evaluate", str(smoke_run), "--batch_size", "64", "--baselines", "false", "--no-progress"])
    out = capsys.readouterr().out
    assert "encoder" in out and "eval.json" in out
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path)])
    assert info.value.code == 2 and "no checkpoint.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(smoke_run), "--knn_k", "many"])
    assert info.value.code == 2


def test_unfinished_runs_are_not_evaluated(smoke_run, tmp_path):
    import shutil
    unfinished = tmp_path / "unfinished"
    shutil.copytree(smoke_run, unfinished)
    (unfinished / "summary.json").unlink()
    (unfinished / "eval.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        evaluate_run(unfinished, EvalConfig(batch_size=64), progress=False)


def test_pretext_scores_of_mae_show_no_reliance_on_other_images():
    """MAE encodes one image per sequence: swapping the other images of its group cannot change its loss;
    naive mixing's global attention reads the other images even at random init."""
    from mixedae_core.config import make_config
    from mixedae_core.data import load_dataset
    from mixedae_core.evaluate import pretext_scores
    from mixedae_core.model import build_model
    config = make_config("smoke", method="mae")
    test = load_dataset("synthetic", "test", config.img_size, config.in_chans, False, config.synthetic_size, 0)
    torch.manual_seed(0)
    scores = pretext_scores(build_model(config).eval(), config, test, 32)
    assert all(scores[f"dose_reliance_{layout}"] == 0 for layout in ("random", "class", "views", "same_image"))
    assert scores["dose_sensitivity"] == 0 and scores["dose_pred_change"] == 0
    assert scores["shared_loss_random"] > 0 and scores["shared_loss_class"] > 0 and scores["floor_random"] > 0
    torch.manual_seed(0)
    naive = make_config("smoke", method="naive")
    assert pretext_scores(build_model(naive).eval(), naive, test, 32)["dose_pred_change"] > 1e-3


def test_runs_share_the_baselines_that_nothing_they_change_can_change(tmp_path):
    """The baselines (random init, raw pixels, maps, the supervised control) never mix and never see a MixedAE
    switch: every method and ratio of a seed shares one cache entry; sizes, seed and recipe do not."""
    ec = EvalConfig(batch_size=64)
    shared = baselines_path(make_config("smoke", method="mae"), ec, tmp_path)
    for kw in (dict(method="mixedae"), dict(method="mixedae", mix_ratio=0.5), dict(method="naive", mix_mode="full"),
               dict(method="mixedae", hc_form="features", hc_weight=0.1, cls_per_image=False)):
        assert baselines_path(make_config("smoke", **kw), ec, tmp_path) == shared, kw
    for kw in (dict(method="mae", seed=1), dict(method="mae", embed_dim=48), dict(method="mae", precision="bf16")):
        assert baselines_path(make_config("smoke", **kw), ec, tmp_path) != shared, kw
    assert baselines_path(make_config("smoke"), EvalConfig(batch_size=32), tmp_path) != shared


def test_the_positive_control_attends_to_the_object_because_it_was_taught_to():
    """Its map training reaches the map the measure reads (the last block's [CLS] attention, through the export
    and the encoder's own attention path): without it, labels alone leave that map off the cluttered object."""
    config = make_config("smoke", method="mae")
    ec = EvalConfig(batch_size=64, control_epochs=30)
    taught, labels_only = (supervised_control(config, ec, "cpu", map_weight=w)["object_iou_cluttered"]
                           for w in (1.0, 0.0))
    uniform = map_baseline_scores(eval_splits(config, ec)[1].images, config.patch_size)["uniform map"]
    assert taught > max(labels_only, uniform["object_iou_cluttered"]) + 0.2


def test_only_the_control_seeds_mae_record_waits_for_the_positive_control(tmp_path, monkeypatch):
    """The control trains for several pre-trainings' time: the MAE record of the control seed carries it (the
    notebooks read the baselines there), the other methods of that seed are evaluated without waiting for it."""
    ec = EvalConfig(batch_size=64, probe_max_iter=20, control_epochs=1, pretext_images=32)
    scores = {}
    for method in ("naive", "mae"):
        config = make_config("smoke", method=method, epochs=1)
        train(config, tmp_path / method, progress=False)
        scores[method] = evaluate_run(tmp_path / method, ec, progress=False)["scores"]
    assert CONTROL in scores["mae"] and CONTROL not in scores["naive"]
    assert 0 <= scores["mae"][CONTROL]["object_iou_cluttered"] <= 1
    assert scores["mae"]["random_init"] == scores["naive"]["random_init"]  # one cached entry, shared
    assert not records_control(make_config("smoke", method="mae", seed=1), ec)
    assert not records_control(make_config("smoke", method="mae"), dataclasses.replace(ec, control_epochs=0))
    # a new design of the control outdates the one record that carries it, not the others of the campaign
    monkeypatch.setattr(runs_module, "CONTROL_VERSION", runs_module.CONTROL_VERSION + 1)
    for method in ("naive", "mae"):
        export_record(tmp_path / method, tmp_path / "records" / method)
    assert record_is_current(tmp_path / "records" / "naive", ec)
    assert not record_is_current(tmp_path / "records" / "mae", ec)
