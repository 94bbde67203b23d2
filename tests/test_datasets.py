"""A preset's suite on another dataset: what a dataset fixes in a config, an image folder's test split and its
evaluation images, the folders that keep each dataset's results apart, and every notebook on a generated folder."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mixedae_core.config import make_config
from mixedae_core.data import DatasetError, folder_split, held_out, load_image_folder
from mixedae_core.lab.experiments import NOTEBOOKS
from mixedae_core.lab.reproduce import run_notebooks
from mixedae_core.lab.runs import results_name


def write_folder(root, counts: dict[str, int]):
    """One sub-folder of PNGs per class, odd sizes, some greyscale: class c's images tinted by c."""
    rng = np.random.default_rng(0)
    for c, (label, n) in enumerate(counts.items()):
        (root / label).mkdir(parents=True)
        for i in range(n):
            h, w = 16 + i % 5, 20 - i % 3
            pixels = rng.integers(0, 128, (h, w, 3), dtype=np.uint8) + np.uint8(40 * c)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 7 == 0 else image).save(root / label / f"{i}.png")
    return root


def test_a_dataset_brings_its_channels_and_size_and_an_explicit_field_still_wins():
    assert make_config("gpu", dataset="cifar10").in_chans == 3
    assert make_config("cpu", dataset="imagefolder:/data/x").in_chans == 3
    fashion = make_config("smoke", dataset="fashion-mnist")
    assert (fashion.in_chans, fashion.img_size) == (1, 32)
    assert make_config("smoke", dataset="synthetic", in_chans=1).in_chans == 1  # generated: any channel count
    with pytest.raises(ValueError, match="set in_chans=3"):
        make_config("cpu", dataset="cifar10", in_chans=1)


def test_a_folder_without_train_and_val_holds_out_a_seeded_tenth_of_each_class(tmp_path):
    folder = write_folder(tmp_path, {"a": 1, "b": 5, "c": 30})
    train, test = (folder_split(str(folder), split, None) for split in ("train", "test"))
    assert [test.targets.count(c) for c in range(3)] == [0, 1, 3]  # never a class's only image, at least one
    assert {p for p, _ in train.samples}.isdisjoint(p for p, _ in test.samples)
    assert len(train) + len(test) == 36 and held_out(train.targets + test.targets).sum() == 4
    assert folder_split(str(folder), "test", None).samples == test.samples  # the same images every time


def test_a_folder_with_train_and_val_is_split_by_them_and_their_classes_must_match(tmp_path):
    write_folder(tmp_path / "train", {"a": 3, "b": 3})
    write_folder(tmp_path / "val", {"a": 2, "b": 1})
    assert len(folder_split(str(tmp_path), "train", None)) == 6
    assert folder_split(str(tmp_path), "test", None).targets == [0, 0, 1]
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "c")
    with pytest.raises(DatasetError, match="hold different class folders"):
        folder_split(str(tmp_path), "test", None)


def test_evaluation_images_of_a_folder_are_uint8_at_the_models_size_and_a_limit_keeps_every_class(tmp_path):
    folder = write_folder(tmp_path, {"a": 20, "b": 20})
    full = load_image_folder(str(folder), "train", 16)
    assert full.images.shape == (36, 3, 16, 16) and full.images.dtype == torch.uint8 and full.num_classes == 2
    few = load_image_folder(str(folder), "train", 16, limit=10)
    assert len(few) == 10 and set(few.labels.tolist()) == {0, 1}
    assert torch.equal(few.images, full.images[:10])  # a limit is the first images of one fixed order


def test_each_dataset_has_its_own_results_folder():
    assert results_name("cpu") == results_name("cpu", "fashion-mnist") == "cpu"
    assert results_name("gpu", "cifar10") == "gpu-cifar10"
    one, other = results_name("smoke", "imagefolder:/a/pets"), results_name("smoke", "imagefolder:/b/pets")
    assert one.startswith("smoke-pets-") and other.startswith("smoke-pets-") and one != other


def test_every_notebook_runs_on_an_image_folder_with_its_results_apart(tmp_path):
    """`make reproduce PRESET=smoke DATASET=imagefolder:PATH`: each class keeps 4 of its 40 images for testing
    (the fewest notebook 02's same-class neighbours need), and the data has no object masks."""
    folder = write_folder(tmp_path / "pets", {"cat": 40, "dog": 40, "owl": 40})
    dataset = f"imagefolder:{folder}"
    name = results_name("smoke", dataset)
    timings = run_notebooks("smoke", tmp_path / "results", runs_root=str(tmp_path / "runs-cache"), progress=False,
                            workers=2, dataset=dataset)
    out = tmp_path / "results"
    assert list(timings) == list(NOTEBOOKS)
    assert all((out / "notebooks" / name / f"{n}.ipynb").exists() for n in NOTEBOOKS)
    assert not (out / "tables" / "smoke").exists() and not (out / "runs" / "smoke").exists()
    tables = out / "tables" / name
    transfer = pd.read_csv(tables / "01_transfer.csv", comment="#")
    assert f"# dataset: {dataset}" in (tables / "01_transfer.csv").read_text().splitlines()
    assert set(transfer.steps) == {2 * (108 // 16)}  # 2 epochs of the 108 training images: the test images held out
    record = json.loads((out / "runs" / name / transfer.run[0] / "eval.json").read_text())
    assert record["scores"]["encoder"]["test_images"] == 12 and record["config"]["dataset"] == dataset
    # object awareness falls back: maps drawn, no IoU figure, the object claims reported without a verdict
    assert transfer.object_iou_cluttered.isna().all()
    figures = {p.stem for p in (out / "figures" / name).glob("05_*.png")}
    assert "05_attention_maps" in figures and "05_object_awareness" not in figures
    claims = pd.read_csv(tables / "claims_05_attention_maps.csv", comment="#")
    objects = claims[claims.claim.str.contains("object-aware")]
    assert len(objects) == 2 and objects.verdict.str.contains("the data has no object masks").all()
