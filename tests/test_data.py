"""Datasets, on-device augmentation, batch order, and the errors a user sees for bad data."""
import gzip

import numpy as np
import pytest
import torch

import mixedae_core.data as data
from mixedae_core.data import (CheckedImageFolder, DatasetError, epoch_order, load_dataset, make_synthetic,
                               random_resized_crop_flip)


def write_idx(path, array):
    """The IDX format of (Fashion-)MNIST: magic 0x0000080N, big-endian dims, uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        images, labels = data.FASHION_MNIST_FILES[split]
        write_idx(tmp_path / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / labels, np.arange(n) % 10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    return tmp_path


def test_fashion_mnist_reader_pads_to_32(fake_fashion):
    train = load_dataset("fashion-mnist", "train")
    raw = np.frombuffer(gzip.open(fake_fashion / "train-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(30, 28, 28)
    assert train.images.shape == (30, 1, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(raw.copy()))
    assert train.images[:, :, :2].sum() == 0  # zero border
    assert torch.equal(train.labels, torch.arange(30) % 10) and train.num_classes == 10
    assert len(load_dataset("fashion-mnist", "test")) == 10


def test_truncated_fashion_file_is_named(fake_fashion):
    path = fake_fashion / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        content = f.read()
    with gzip.open(path, "wb") as f:
        f.write(content[:1000])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz is truncated"):
        load_dataset("fashion-mnist", "train")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path))
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(DatasetError, match="make data"):
        load_dataset("fashion-mnist", "train")


def test_missing_torchvision_dataset_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="--download true"):
        load_dataset("cifar10", "train")


def test_corrupt_image_in_folder_is_named(tmp_path):
    from PIL import Image
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "cat" / "good.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"1 file\(s\) that are not readable images: .*cat/broken.png"):
        CheckedImageFolder(str(tmp_path), transform=None)  # named when listed, before anything reads the pixels
    # a readable header over pixels cut short: named when the pixels are read
    (tmp_path / "cat" / "broken.png").write_bytes((tmp_path / "cat" / "good.png").read_bytes()[:200])
    folder = CheckedImageFolder(str(tmp_path), transform=None)
    broken = [i for i, (p, _) in enumerate(folder.samples) if p.endswith("broken.png")][0]
    folder[1 - broken]  # the good one loads
    with pytest.raises(DatasetError, match=r"cannot read image .*cat/broken.png"):
        folder[broken]
    with pytest.raises(DatasetError, match="does not exist"):
        CheckedImageFolder(str(tmp_path / "missing"), transform=None)


def test_synthetic_is_deterministic_and_labelled():
    a, b = make_synthetic(32, seed=3), make_synthetic(32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (32, 3, 32, 32) and set(a.labels.tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a.images, make_synthetic(32, seed=4).images)


# ------------------------------------------------------------------------------------ augmentation
def ramp(n=4, size=16):
    x = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return x.contiguous()


def test_full_crop_without_flip_is_identity():
    images = torch.rand(6, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(images, 16, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(6):  # each image is itself or its mirror image, resampled exactly at pixel centres
        same = (out[i] - images[i]).abs().max() < 1e-5
        mirrored = (out[i] - images[i].flip(-1)).abs().max() < 1e-5
        assert same or mirrored


def test_crop_scale_zooms_in():
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(ramp(), 16, g, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    spans = out[:, 0, 0].max(-1).values - out[:, 0, 0].min(-1).values
    # a quarter of the area at ratio 1 is half the width: the ramp spans about half its range
    assert torch.allclose(spans, torch.full_like(spans, 0.5), atol=0.07)


def test_flip_is_a_fair_coin_and_seeded():
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(ramp(400), 16, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    share = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float().mean()
    assert 0.4 < share < 0.6
    again = random_resized_crop_flip(ramp(400), 16, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(out, again)


# ------------------------------------------------------------------------------------ batch order
def test_random_order_is_a_permutation_cut_to_whole_batches():
    labels = torch.arange(103) % 5
    order = epoch_order(labels, 10, 4, "random", torch.Generator().manual_seed(0))
    assert len(order) == 100 and len(set(order.tolist())) == 100


def test_class_groups_hold_one_class_each():
    labels = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(1))
    order = epoch_order(labels, 16, 4, "class", torch.Generator().manual_seed(0))
    groups = labels[order].view(-1, 4)
    assert (groups == groups[:, :1]).all()
    assert len(set(order.tolist())) == len(order) and len(order) % 16 == 0
    assert len(torch.unique(groups[:, 0])) == 5  # every class takes part
    with pytest.raises(ValueError, match="group_by"):
        epoch_order(labels, 16, 4, "colour", torch.Generator())
