"""The paper's metrics on data where the answer is known: fine-tuning (MAE's recipe, pooled read-out), the dense
scenes and their labels, mIoU, and a record's kept weights."""
import json
from pathlib import Path

import pytest
import torch

from mixedae_core.config import EvalConfig, make_config
from mixedae_core.data import DatasetError, TensorDataset, find_fashion_mnist, make_synthetic
from mixedae_core.evaluate import eval_splits, extract_features, knn_accuracy
from mixedae_core.dense import BACKGROUND, mean_iou, patch_labels, scenes
from mixedae_core.finetune import FinetuneRecipe, finetune_top1, labelled_subset, pooled_vit
from mixedae_core.lab.runs import evaluate_run, export_record, record_has_model
from mixedae_core.model import build_model
from mixedae_core.runfiles import WEIGHTS, load_model, read_checkpoint
from mixedae_core.train import train

REPO = Path(__file__).resolve().parents[1]


def test_finetune_learns_synthetic_classes():
    torch.manual_seed(0)
    model = build_model(make_config("smoke", method="mae"))
    train_set, test_set = make_synthetic(256, img_size=16, seed=0), make_synthetic(64, img_size=16, seed=1)
    recipe = FinetuneRecipe(labels=256, epochs=20, batch_size=32, blr=5e-3)
    assert finetune_top1(model, train_set, test_set, recipe) > 0.5  # chance: 0.25


@pytest.mark.parametrize("method", ["mae", "mixedae"])
def test_the_pooled_vit_computes_the_encoders_blocks(method):
    """The export loads every encoder weight where timm reads it: its blocks' output, through the pre-trained final
    norm, is the encoder's patch tokens (a mixing model's [CLS] mask aside, which the pooled read-out drops, so MAE
    only is compared exactly). The head and fc_norm are fresh, as MAE's fine-tuning starts them."""
    torch.manual_seed(0)
    model = build_model(make_config("smoke", method=method)).eval()
    vit = pooled_vit(model, num_classes=3).eval()
    x = torch.randn(4, 3, 16, 16)
    tokens = model.norm(vit.forward_features(x))  # timm leaves out its final norm when it pools (fc_norm instead)
    if method == "mae":
        torch.testing.assert_close(tokens, model.forward_features(x))
    assert torch.equal(vit.fc_norm.weight, torch.ones(model.config.embed_dim)) and vit.head.weight.abs().max() < 0.1
    assert vit(x).shape == (4, 3)


def test_the_labelled_subset_is_balanced_and_fixed():
    data = make_synthetic(400, img_size=16, seed=0)
    a, b = labelled_subset(data, 40), labelled_subset(data, 40)
    assert torch.equal(a.images, b.images) and len(a) == 40
    assert torch.bincount(a.labels, minlength=data.num_classes).tolist() == [10] * data.num_classes
    with pytest.raises(ValueError, match="every class"):
        labelled_subset(data, 4000)


def black_background_objects(n=60, classes=4):
    """Squares of a class-specific brightness on black: the label of every lit pixel is known."""
    images = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    for i in range(n):
        images[i, :, 6:26, 6:26] = 50 + 50 * int(labels[i])
    return TensorDataset(images, labels, "fashion-mnist", classes)


def test_scenes_label_each_objects_pixels_with_its_class():
    data = black_background_objects()
    images, targets = scenes(data, 50, torch.Generator().manual_seed(0), objects=2, fragments=0)
    lit = images[:, 0] > 0
    assert torch.equal(targets != BACKGROUND, lit)  # no clutter: every lit pixel is an object's
    # the square of class k is drawn with brightness 50 + 50 k: a pixel's label follows from its value
    assert torch.equal(targets[lit], (images[:, 0][lit].long() - 50) // 50 + 1)
    distinct = [len(set(t.unique().tolist()) - {BACKGROUND}) for t in targets]
    assert max(distinct) == 2 and sum(d == 2 for d in distinct) > 40  # two classes, rarely one hidden by the other


def test_clutter_is_background():
    data = black_background_objects()
    images, targets = scenes(data, 50, torch.Generator().manual_seed(0), objects=2, fragments=4)
    clutter = (images[:, 0] > 0) & (targets == BACKGROUND)
    assert clutter.any()


def test_patch_labels_take_the_majority_and_miou_counts_each_label():
    pixels = torch.zeros(1, 8, 8, dtype=torch.int64)
    pixels[0, :4, :3] = 2   # 12 of the top-left patch's 16 pixels: label 2
    pixels[0, :2, 4:] = 1   # 8 of 16 in the top-right patch: a tie with background goes to the lower label (0)
    assert patch_labels(pixels, 4, 3).tolist() == [[2, 0, 0, 0]]
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    assert mean_iou(target, target, 3) == 1.0
    # one label-1 patch predicted 0: label 0 IoU 2 / 3 (one false positive), label 1 1 / 2 (one miss), label 2 1
    assert mean_iou(torch.tensor([0, 0, 1, 0, 2, 2]), target, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_a_records_kept_weights_give_its_scores_bit_for_bit(tmp_path, monkeypatch):
    """Every score, the paper metrics' too, from the record alone; its baselines go to the run cache, not results/."""
    monkeypatch.setenv("MIXEDAE_RUNS", str(tmp_path / "cache"))
    run, record = tmp_path / "run", tmp_path / "results" / "record"
    train(make_config("smoke", method="mixedae", epochs=1), run, progress=False)
    ec = EvalConfig(batch_size=64, pretext_images=32, probe_max_iter=20, finetune_labels=64, finetune_epochs=1,
                    finetune_batch=16, dense_scenes=32, dense_epochs=1, dense_test_scenes=32, dense_object_size=8)
    scores = evaluate_run(run, ec, progress=False)["scores"]
    assert {"finetune_top1", "dense_miou"} <= set(scores["encoder"]) and "dense_miou" in scores["raw_pixels"]
    export_record(run, record)
    assert record_has_model(record) and not (record / "checkpoint.pt").exists()
    kept, _ = load_model(record)
    for name, value in read_checkpoint(run)["model"].items():
        assert torch.equal(kept.state_dict()[name], value), name
    (record / "eval.json").unlink()
    assert evaluate_run(record, ec, progress=False)["scores"] == scores
    assert json.loads((record / "eval.json").read_text())["scores"] == scores
    assert not (record.parent / "baselines").exists() and (tmp_path / "cache" / "baselines").is_dir()
    (record / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        evaluate_run(record, EvalConfig(batch_size=32), progress=False)


def fashion_mnist_available() -> bool:
    try:
        find_fashion_mnist()
        return True
    except DatasetError:
        return False


KEPT = sorted((REPO / "results" / "runs").glob(f"*/*/{WEIGHTS}"))


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not on this machine (make data)")
@pytest.mark.parametrize("weights", KEPT, ids=[f"{w.parent.parent.name}/{w.parent.name}" for w in KEPT])
def test_the_committed_kept_weights_give_their_records_knn(weights):
    """Every committed encoder, loaded from its record alone, scores the record's kNN [CLS] exactly: the record's
    numbers are the kept model's, and a changed evaluation can start from it."""
    record = weights.parent
    evaluation = json.loads((record / "eval.json").read_text())
    model, config = load_model(record)
    ec = EvalConfig(**{k: v for k, v in evaluation["eval"].items() if k in EvalConfig.__dataclass_fields__})
    train_split, test_split = eval_splits(config, ec)
    features = [extract_features(model, s.images, s.name, ec.batch_size)["cls"] for s in (train_split, test_split)]
    knn = knn_accuracy(features[0], train_split.labels, features[1], test_split.labels, ec.knn_k, ec.knn_temperature,
                       train_split.num_classes)
    assert knn == evaluation["scores"]["encoder"]["knn_cls"]


@pytest.mark.parametrize("record", sorted((REPO / "results" / "runs" / "cpu").glob("*/eval.json")),
                         ids=lambda path: path.parent.name)
def test_every_committed_cpu_record_carries_the_paper_metrics_beside_its_floors(record):
    scores = json.loads(record.read_text())["scores"]
    assert {"finetune_top1", "dense_miou"} <= scores["encoder"].keys()
    assert {"finetune_top1", "dense_miou"} <= scores["random_init"].keys()  # the fine-tuning floor, dense's random init
    assert "dense_miou" in scores["raw_pixels"]


def test_the_dense_protocol_learns_labels_that_the_patches_show():
    """Squares whose brightness codes their class: raw patch pixels under a linear head and the fine-tuned
    segmentation both recover the labels far above what predicting background everywhere scores."""
    from mixedae_core.dense import patch_labels, predict_patches, train_segmentation
    from mixedae_core.transfer import frozen_pixels_miou
    data = black_background_objects(n=200)
    images, pixels = scenes(data, 192, torch.Generator().manual_seed(0), objects=2, object_size=16, fragments=0)
    targets = patch_labels(pixels, 4, 5)
    split = {"train": (images[:128], targets[:128]), "test": (images[128:], targets[128:]),
             "dataset": "fashion-mnist", "labels": 5}
    ec = EvalConfig(dense_scenes=128)
    background_only = mean_iou(torch.zeros_like(targets[128:]), targets[128:], 5)
    assert frozen_pixels_miou(split, 4, ec) > 0.6 > background_only + 0.4  # background only: about 0.17
    torch.manual_seed(0)
    model = build_model(make_config("smoke", method="mae", img_size=32, in_chans=1))
    seg = train_segmentation(model, images[:128], targets[:128], "fashion-mnist",
                             FinetuneRecipe(labels=128, epochs=30, batch_size=32, blr=5e-3), 5)
    assert mean_iou(predict_patches(seg, images[128:], "fashion-mnist"), targets[128:], 5) > background_only + 0.2
