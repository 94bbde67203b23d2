"""The on-disk formats of CIFAR-10/100, STL-10 and image folders, written tiny in their real layout, read back
through the product's loaders and training batches, and trained on for one step; all offline.

CIFAR-10/100 and STL-10 are read by torchvision, which first compares every file with the md5 sum of the
official release. Files written here cannot match those sums, so the tests take two sides of that check:
- unpatched, the files fail it, and a user must get our `DatasetError`, naming the folder and what to do;
- to read the files end to end, `without_md5` replaces torchvision's `check_integrity` in its cifar and stl10
  modules by the same check without the md5 comparison (each file must still exist). Only that third-party
  check is replaced: torchvision's parsing of the files and all of our code run as they do on the real data.
Reading these formats ourselves would drop that protection against damaged downloads for no gain: images of
one's own belong in an image folder, whose JPEGs and PNGs (odd sizes, greyscale, RGBA, palette) are tested here too.
"""
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.stl10 as tv_stl10
import torchvision.transforms as T
from PIL import Image
from torchvision.datasets.utils import check_integrity

from mixedae_core.config import make_config
from mixedae_core.data import (CheckedImageFolder, DatasetError, dataset_of, load_dataset, stored_dataset,
                               training_batches)
from mixedae_core.train import train

CPU = torch.device("cpu")
TINY_MODEL = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def random_images(n, size, seed):
    """[n, 3, size, size] uint8, no two pixels alike in general: a transposed or shuffled read shows."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


RELEASES = {  # the release's folder under MIXEDAE_DATA, image side, classes
    "cifar10": ("cifar-10-batches-py", 32, 10),
    "cifar100": ("cifar-100-python", 32, 100),
    "stl10": ("stl10_binary", 96, 10),
}


# ------------------------------------------------------------------------------------ CIFAR-10/100
# The python version of the release: pickled dicts (written by Python 2, hence protocol 2), 'data' uint8
# [n, 3072] with each row the R, G and B planes of one 32 x 32 image in row-major order.
CIFAR = {  # train files, test file, labels key, meta file, meta key
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", "batches.meta", "label_names"),
    "cifar100": (["train"], "test", "fine_labels", "meta", "fine_label_names"),
}


def write_pickle(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def write_cifar(root, name, train_images=20):
    """The release's files, `train_images` split over the training files; {split: (images, labels)} as written."""
    train_files, test_file, labels_key, meta_file, meta_key = CIFAR[name]
    per_file = train_images // len(train_files)
    folder_name, _, classes = RELEASES[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {"train": [], "test": []}
    for seed, (split, file) in enumerate([("train", f) for f in train_files] + [("test", test_file)]):
        images, labels = random_images(per_file, 32, seed), rng.integers(0, classes, per_file)
        labels[0] = classes - 1  # the last class reads back as itself
        batch = {"batch_label": f"{split} batch {seed}", "data": images.reshape(per_file, 3 * 32 * 32),
                 labels_key: labels.tolist(), "filenames": [f"{seed}_{i}.png" for i in range(per_file)]}
        if name == "cifar100":
            batch["coarse_labels"] = (labels // 5).tolist()
        write_pickle(folder / file, batch)
        written[split].append((images, labels))
    write_pickle(folder / meta_file, {meta_key: [f"class {c}" for c in range(classes)]})
    return {split: tuple(np.concatenate(part) for part in zip(*parts)) for split, parts in written.items()}


# ------------------------------------------------------------------------------------ STL-10
def write_stl10(root, n=16):
    """The binary release: stl10_binary/{train,test}_X.bin uint8 images, each channel plane stored column-major
    (Matlab's order); {train,test}_y.bin labels 1..10; class_names.txt. unlabeled_X.bin (100k images) is
    written empty: the loaders never read it, but torchvision's check wants every file of the release."""
    folder = root / RELEASES["stl10"][0]
    folder.mkdir(parents=True)
    written = {}
    for seed, split in enumerate(("train", "test")):
        images, labels = random_images(n, 96, seed), np.arange(n) % 10
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = (images, labels)
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(f"class {c}" for c in range(10)) + "\n")
    return written


def write_release(root, name):
    return write_stl10(root) if name == "stl10" else write_cifar(root, name)


@pytest.fixture
def without_md5(monkeypatch):
    """torchvision's file check without its md5 comparison (a third-party check, not ours): files must exist."""
    for module in (tv_cifar, tv_stl10):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: check_integrity(fpath))


@pytest.mark.parametrize("name", RELEASES)
def test_release_files_read_back_exactly(name, tmp_path, monkeypatch, without_md5):
    written = write_release(tmp_path, name)
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path))
    _, size, classes = RELEASES[name]
    for split, (images, labels) in written.items():
        ds = load_dataset(name, split)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(labels), 3, size, size)
        assert torch.equal(ds.images, torch.from_numpy(images))  # every pixel in place: [N, C, H, W], no transpose
        assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, torch.from_numpy(labels).long())
        assert ds.num_classes == classes


@pytest.mark.parametrize("name", RELEASES)
def test_files_not_of_the_official_release_are_refused_with_what_to_do(name, tmp_path, monkeypatch):
    write_release(tmp_path, name)
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path))
    folder = tmp_path.resolve() / RELEASES[name][0]
    with pytest.raises(DatasetError) as refusal:
        load_dataset(name, "train")
    message = str(refusal.value)
    assert message.startswith(f"{name} not found or corrupted in {folder} ")
    assert "md5" in message and "--download true" in message and "imagefolder:PATH" in message


def train_one_step(run_dir, **overrides) -> dict:
    """One optimizer step of a tiny model on one batch of 16 (four mixing groups); its summary."""
    config = make_config("smoke", max_steps=1, batch_size=16, **TINY_MODEL, **overrides)
    micro_batches = training_batches(config, CPU).micro_batches(0)
    images = torch.cat([images for images, _ in micro_batches])
    size = config.img_size
    assert images.shape == (16, 3, size, size) and images.dtype == torch.float32 and images.isfinite().all()
    summary = train(config, run_dir, resume=False, progress=False)
    assert summary["steps"] == 1 and math.isfinite(summary["final"]["loss"])
    return summary


@pytest.mark.parametrize("name", RELEASES)
def test_release_files_train_one_step(name, tmp_path, monkeypatch, without_md5):
    write_release(tmp_path / "data", name)
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path / "data"))
    size = RELEASES[name][1]
    train_one_step(tmp_path / "run", dataset=name, img_size=size, patch_size=size // 4)


def test_stl10_is_evaluated_at_the_models_size_and_trains_from_its_own_pixels(tmp_path, monkeypatch, without_md5):
    written = write_release(tmp_path, "stl10")
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path))
    config = make_config("smoke", dataset="stl10")  # a 16 px model on 96 px images
    test = dataset_of(config, "test")
    assert test.images.shape == (len(written["test"][1]), 3, 16, 16) and test.images.dtype == torch.uint8
    assert stored_dataset(config, "train").images.shape[-1] == 96


# ------------------------------------------------------------------------------------ image folders
def odd_images(seed):
    """(file name, PIL image) of one class: odd sizes, both formats, every common mode a loader meets."""
    rng = np.random.default_rng(seed)

    def pixels(h, w, *channels):
        return rng.integers(0, 256, (h, w, *channels), dtype=np.uint8)

    def ramps(h, w):  # smooth, so that JPEG keeps it close; a flip, transpose or channel swap does not
        y, x = np.mgrid[0:h, 0:w]
        return np.stack([255 * x / w, 255 * y / h, 255 * (x + y) / (h + w)], -1).astype(np.uint8)

    palette = Image.fromarray(pixels(17, 31, 3)).quantize(16)
    return [("wide.jpg", Image.fromarray(ramps(90, 200))), ("tall.jpeg", Image.fromarray(ramps(53, 37))),
            ("grey.jpg", Image.fromarray(ramps(41, 23)[..., 0])), ("rgb.png", Image.fromarray(pixels(53, 37, 3))),
            ("grey.png", Image.fromarray(pixels(29, 61))), ("rgba.png", Image.fromarray(pixels(45, 45, 4))),
            ("palette.png", palette), ("tiny.png", Image.fromarray(pixels(7, 5, 3)))]


def write_image_folder(root):
    """Classes 'cat' and 'dog', one sub-folder each (ImageNet's train/ layout); {path: image as written}."""
    written = {}
    for seed, label in enumerate(("cat", "dog")):
        (root / label).mkdir(parents=True)
        for file, image in odd_images(seed):
            image.save(root / label / file)
            written[str(root / label / file)] = image
    return written


def as_rgb_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8, what a 3-channel model is to see: greyscale repeated, alpha dropped, palette looked up."""
    pixels = np.array(image)
    if image.mode == "P":
        pixels = np.array(image.getpalette(), np.uint8).reshape(-1, 3)[pixels]
    elif image.mode == "L":
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return torch.from_numpy(pixels[..., :3].copy()).permute(2, 0, 1)


def test_image_folder_reads_every_mode_as_three_channels_labelled_by_folder(tmp_path):
    written = write_image_folder(tmp_path)
    folder = CheckedImageFolder(str(tmp_path), transform=T.PILToTensor())  # pixels untouched by augmentation
    assert folder.class_to_idx == {"cat": 0, "dog": 1} and len(folder) == len(written)
    for (path, label), (image, read_label) in zip(folder.samples, folder):
        expected = as_rgb_tensor(written[path])
        assert read_label == label == folder.class_to_idx[path.split("/")[-2]]
        assert image.dtype == torch.uint8 and image.shape == expected.shape  # [3, H, W] at the file's own size
        if path.endswith(".png"):  # lossless: every value as written
            assert torch.equal(image, expected), path
        else:  # JPEG is lossy: close to the smooth ramps written, and greyscale stays grey
            assert (image.float() - expected.float()).abs().max() < 16, path
            if written[path].mode == "L":
                assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_image_folder_trains_one_step(tmp_path):
    folder = tmp_path / "images"  # ImageNet's layout: train/ trains, every one of its 16 images
    for split in ("train", "val"):
        write_image_folder(folder / split)
    train_one_step(tmp_path / "run", dataset=f"imagefolder:{folder}", img_size=32, patch_size=8, workers=0)
