"""Datasets, on-device augmentation and batch order.

Small datasets (Fashion-MNIST, CIFAR, STL-10, generated) are held on the device as uint8 tensors and
augmented there in one batched op (airbench style: no per-image Python on the hot path). Folders of
images (ImageNet, Imagenette, ...) stream through DataLoader workers with torchvision transforms for
training; their evaluation images are read once, at the model's size, and held like a small dataset's.
Every random draw takes an explicit generator, so a run is a pure function of (seed, step): resumed
and multi-process runs see exactly the batches a single uninterrupted run sees.
"""
import functools
import gzip
import math
import os
from dataclasses import dataclass, replace
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
import torchvision.transforms as T
from torch.utils.data import DataLoader, DistributedSampler, Subset
from PIL import Image
from torchvision.datasets import ImageFolder

from .switches import resolve

FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "data/FashionMNIST/raw", "data/fashion-mnist")
NORMALIZATION = {  # per-channel mean and std of the training images
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, as MAE
}


class DatasetError(RuntimeError):
    """A dataset is missing, unreadable or too small; the message says which file and how to fix it."""


@dataclass
class TensorDataset:
    """Images [n, C, H, W] uint8 and labels [n] int64, both on one device."""
    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        return TensorDataset(self.images.to(device), self.labels.to(device), self.name, self.num_classes)

    def subset(self, n: int | None):
        if n is None or n >= len(self):
            return self
        return TensorDataset(self.images[:n], self.labels[:n], self.name, self.num_classes)


def data_root() -> Path:
    return Path(os.environ.get("MIXEDAE_DATA", "data"))


# ---------------------------------------------------------------------------------- loaders
def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read {path}: {err}. The file is damaged: delete it and run `make data`.") from err
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} values): "
                           "delete it and run `make data`.")
    return data.reshape(shape)


def find_fashion_mnist() -> Path:
    candidates = [Path(os.environ["FASHION_MNIST_DIR"])] if "FASHION_MNIST_DIR" in os.environ else []
    candidates += [Path(d) for d in FASHION_MNIST_DIRS] + [data_root() / "FashionMNIST" / "raw"]
    for d in candidates:
        if all((d / f).exists() for files in FASHION_MNIST_FILES.values() for f in files):
            return d
    raise DatasetError("Fashion-MNIST not found (looked in " + ", ".join(map(str, candidates)) + "). "
                       "Run `make data` (installs Debian's dataset-fashion-mnist), or put "
                       + ", ".join(f for files in FASHION_MNIST_FILES.values() for f in files)
                       + " into a folder and set FASHION_MNIST_DIR to it.")


def load_fashion_mnist(split: str) -> TensorDataset:
    folder = find_fashion_mnist()
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = torch.from_numpy(_read_idx(folder / image_file).copy()).unsqueeze(1)
    images = F.pad(images, (2, 2, 2, 2))  # 28 -> 32 px so that patch 4 gives 8 x 8 = 64 positions
    labels = torch.from_numpy(_read_idx(folder / label_file).astype(np.int64))
    return TensorDataset(images, labels, "fashion-mnist", 10)


def load_torchvision(name: str, split: str, download: bool) -> TensorDataset:
    root = data_root()
    train = split == "train"
    reader = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[name]
    try:
        if name in ("cifar10", "cifar100"):
            ds = reader(root, train=train, download=download)
            images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)
        else:
            ds = reader(root, split="train" if train else "test", download=download)
            images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        # torchvision compares every file with the md5 sum of the official release, so files of one's own in
        # this layout fail here too: say so, and where such images belong
        raise DatasetError(f"{name} not found or corrupted in {(root / reader.base_folder).resolve()} ({err}). "
                           f"Download it with `--download true` (needs internet), or set MIXEDAE_DATA to the "
                           f"folder that holds the official release's {reader.base_folder}/ (its files are "
                           f"checked against their md5 sums); train on images of your own with "
                           f"--dataset imagefolder:PATH.") from None
    return TensorDataset(images.contiguous(), labels.long(), name, 100 if name == "cifar100" else 10)


def make_synthetic(n: int, img_size: int = 32, in_chans: int = 3, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    """Generated images for tests: each class is an oriented grating with its own colour, plus noise,
    so that features can separate classes and foreground is not trivially the whole image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(img_size).float(), torch.arange(img_size).float(), indexing="ij")
    angle = labels.float() * math.pi / num_classes
    phase = torch.rand(n, generator=g) * 2 * math.pi
    wave = torch.sin(0.6 * (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]) + phase[:, None, None])
    colour = 0.5 + 0.5 * torch.rand(num_classes, in_chans, generator=torch.Generator().manual_seed(seed + 1))
    images = wave.unsqueeze(1) * colour[labels].view(n, in_chans, 1, 1)
    images = images + 0.2 * torch.randn(n, in_chans, img_size, img_size, generator=g)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return TensorDataset(images, labels, "synthetic", num_classes)


def load_dataset(name: str, split: str, img_size: int = 32, in_chans: int = 3, download: bool = False,
                 synthetic_size: int = 512, seed: int = 0) -> TensorDataset:
    """A device-resident dataset by name: fashion-mnist, cifar10, cifar100, stl10, synthetic."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "fashion-mnist":
        return load_fashion_mnist(split)
    if name in ("cifar10", "cifar100", "stl10"):
        return load_torchvision(name, split, download)
    if name == "synthetic":
        n = synthetic_size if split == "train" else max(synthetic_size // 2, 8)
        return make_synthetic(n, img_size, in_chans, seed=seed if split == "train" else seed + 1000)
    raise ValueError(f"unknown dataset {name!r}")


def stored_dataset(config, split: str) -> TensorDataset:
    """The `split` of a run config's device-resident dataset (a `config.Config`) at its own size: training crops
    from these pixels."""
    return load_dataset(config.dataset_kind, split, config.img_size, config.in_chans, config.download,
                        config.synthetic_size, config.seed)


def dataset_of(config, split: str, limit: int | None = None) -> TensorDataset:
    """The `split` of a run config's dataset, `limit` images of it (None: all), at the model's img_size as the
    encoder reads them whole: resized where the dataset's side differs (STL-10's 96 px on a 32 px model), an
    image folder's as `load_image_folder` reads them."""
    if config.dataset_kind == "imagefolder":
        return load_image_folder(config.dataset_path, split, config.img_size, limit, config.workers)
    data = stored_dataset(config, split).subset(limit)
    if data.images.shape[-1] == config.img_size:
        return data
    images = F.interpolate(data.images.float(), size=(config.img_size, config.img_size), mode="bilinear",
                           antialias=True, align_corners=False)
    return replace(data, images=images.round().clamp(0, 255).to(torch.uint8))


def dataset_channels(name: str) -> int:
    return len(NORMALIZATION[name.split(":")[0]][0])


# ---------------------------------------------------------------------------------- augmentation
def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float, standardised with the dataset's channel statistics."""
    # the first C statistics: generated images take any channel count (real datasets are checked by Config)
    mean, std = (torch.tensor(v[:images.shape[1]], device=images.device).view(1, -1, 1, 1)
                 for v in NORMALIZATION[name])
    return (images.float() / 255 - mean) / std


def random_resized_crop_flip(images: torch.Tensor, out_size: int, generator: torch.Generator,
                             scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """MAE's RandomResizedCrop(scale 0.2-1) + horizontal flip for a whole batch at once (float input).

    One affine grid per image; the crop's area share and log aspect ratio are uniform like torchvision's.
    Where torchvision retries out-of-bounds crops, we shrink the crop to fit (same scale law otherwise).
    """
    B = images.shape[0]
    u = torch.rand(B, 4, generator=generator, device=generator.device).to(images.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # centre in [-1, 1] grid coordinates, crop inside the image
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(torch.rand(B, generator=generator, device=generator.device).to(images.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, (B, images.shape[1], out_size, out_size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ---------------------------------------------------------------------------------- batch order
def epoch_order(labels: torch.Tensor, batch_size: int, group_size: int, group_by: str,
                generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch, cut to whole batches. `group_by='class'` lays the batch out as groups of
    `group_size` consecutive images of one class (for the MI notebook); 'random' is a plain shuffle."""
    n = len(labels)
    if group_by == "random" or group_size == 1:
        order = torch.randperm(n, generator=generator)
    elif group_by == "class":
        groups = []
        for c in torch.unique(labels.cpu()):
            idx = torch.nonzero(labels.cpu() == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            groups.append(idx[: len(idx) // group_size * group_size].view(-1, group_size))
        groups = torch.cat(groups)
        order = groups[torch.randperm(len(groups), generator=generator)].flatten()
    else:
        raise ValueError(f"group_by must be 'random' or 'class', got {group_by!r}")
    return order[: len(order) // batch_size * batch_size]


# ---------------------------------------------------------------------------------- image folders
# A folder without train/ and val/ keeps this share of each class's images out of training as its test split,
# drawn with a fixed seed: every run of the folder trains, and is evaluated, on the same images.
HOLDOUT_SHARE = 0.1
HOLDOUT_SEED = 0


def readable_header(path: str) -> bool:
    """Whether PIL can open the file as an image (it parses the header; the pixels are decoded later)."""
    try:
        with Image.open(path) as image:
            return image.size[0] > 0
    except Exception:  # PIL raises several types for a corrupt file
        return False


class CheckedImageFolder(ImageFolder):
    """torchvision ImageFolder whose unreadable files raise a `DatasetError` naming them: every file's header is
    read up front (threads: on network storage an ImageNet listing is mostly waiting), so a corrupt file stops
    the run before training, not an epoch into it; a file whose pixels cannot be decoded is named when read."""

    def __init__(self, root: str, transform):
        if not Path(root).is_dir():
            what = "is a file, not a folder" if Path(root).exists() else "does not exist"
            raise DatasetError(f"image folder {root} {what}: give imagefolder:PATH with PATH holding "
                               "one sub-folder per class (ImageNet's train/ layout)")
        try:
            super().__init__(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise DatasetError(f"image folder {root} holds no images in class sub-folders ({err})") from None
        empty = [path for path, _ in self.samples if os.path.getsize(path) == 0]  # a stat each: cheap up front
        if empty:
            raise DatasetError(f"image folder {root} holds {len(empty)} empty file(s), e.g. {empty[0]}: remove them")
        paths = [path for path, _ in self.samples]
        with ThreadPool(16) as pool:
            unreadable = [p for p, ok in zip(paths, pool.map(readable_header, paths, chunksize=4096)) if not ok]
        if unreadable:
            raise DatasetError(f"image folder {root} holds {len(unreadable)} file(s) that are not readable images: "
                               f"{', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''}. Remove or "
                               "replace them.")

    def __getitem__(self, index):
        path = self.samples[index][0]
        try:
            return super().__getitem__(index)
        except Exception as err:  # PIL raises several types for a corrupt file
            raise DatasetError(f"cannot read image {path}: {err}. Remove or replace the file.") from err


def held_out(targets) -> torch.Tensor:
    """Bool per image of a folder without train/ and val/, True for its test split: HOLDOUT_SHARE of each
    class's images (at least one, never a class's only image), drawn with HOLDOUT_SEED."""
    targets = torch.as_tensor(targets)
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    held = torch.zeros(len(targets), dtype=torch.bool)
    for c in torch.unique(targets):
        idx = torch.nonzero(targets == c).flatten()
        n = min(max(1, round(HOLDOUT_SHARE * len(idx))), len(idx) - 1)
        held[idx[torch.randperm(len(idx), generator=g)[:n]]] = True
    return held


def folder_split(path: str, split: str, transform) -> CheckedImageFolder:
    """The `split` ('train' or 'test') of image folder PATH: PATH/train and PATH/val where PATH holds both
    (ImageNet's layout), else PATH's class folders, their `held_out` images the test split and the rest the
    training images."""
    root = Path(path)
    if (root / "train").is_dir() and (root / "val").is_dir():
        folder = CheckedImageFolder(str(root / ("train" if split == "train" else "val")), transform)
        if folder.classes != sorted(d.name for d in (root / "train").iterdir() if d.is_dir()):
            raise DatasetError(f"{root / 'val'} and {root / 'train'} hold different class folders: give both the "
                               "same ones, so that a label names one class in both")
        return folder
    folder = CheckedImageFolder(path, transform)
    keep = (held_out(folder.targets) == (split == "test")).tolist()
    folder.samples = [sample for sample, kept in zip(folder.samples, keep) if kept]
    folder.imgs, folder.targets = folder.samples, [label for _, label in folder.samples]
    return folder


def read_batches(loader):
    """The loader's batches. A DatasetError raised in a worker process arrives with the worker's traceback in
    its message: it is raised again with the last line alone, the one that names the file."""
    batches = iter(loader)
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except DatasetError as err:
            raise DatasetError(str(err).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]) from None


@functools.lru_cache(maxsize=4)  # an evaluation reads each split several times: for the model and its baselines
def load_image_folder(path: str, split: str, img_size: int, limit: int | None = None,
                      workers: int = 0) -> TensorDataset:
    """The `split` of an image folder (`folder_split`) as uint8 img_size x img_size images, as MAE evaluates
    (shorter side resized to img_size / 0.875, centre crop): `limit` of them (None: all), in an order drawn with
    HOLDOUT_SEED, so that a limit keeps every class."""
    size = round(img_size / 0.875)
    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(img_size),
                           T.PILToTensor()])
    folder = folder_split(path, split, transform)
    if not len(folder):
        raise DatasetError(f"image folder {path} has no {split} images: a class holds one image out for testing "
                           "only when it has two or more")
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(HOLDOUT_SEED))[:limit].tolist()
    batches = list(read_batches(DataLoader(Subset(folder, order), batch_size=256, num_workers=workers)))
    return TensorDataset(torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches]),
                         "imagefolder", len(folder.classes))


def imagefolder_loader(path: str, img_size: int, batch_size: int, workers: int, seed: int,
                       rank: int = 0, world: int = 1):
    """DataLoader over the training images of an image folder (`folder_split`) with MAE's augmentation; one
    DistributedSampler shard per process."""
    mean, std = NORMALIZATION["imagefolder"]
    transform = T.Compose([T.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    ds = folder_split(path, "train", transform)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


# ---------------------------------------------------------------------------------- batch iterators
def step_generator(seed: int, stream: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of one random stream (1: epoch order, 2: crops and noise, 3: folder noise) at one index."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + stream * 7_919 + index)


def training_batches(config, device, rank: int = 0, world: int = 1):
    """The training batches of a config: DeviceBatches for device-resident datasets, else FolderBatches."""
    return (FolderBatches if config.dataset_kind == "imagefolder" else DeviceBatches)(config, device, rank, world)


class DeviceBatches:
    """A device-resident dataset cut into global batches; each process takes its shard of each one."""

    def __init__(self, config, device, rank: int, world: int):
        self.config, self.device, self.rank, self.world = config, device, rank, world
        self.group_size = resolve(config).group_size
        data = stored_dataset(config, "train")
        self.data = data.subset(config.train_subset).to(device)
        self.name = data.name
        self._order_epoch, self._order = None, None
        self.steps_per_epoch = len(self._epoch_order(0)) // config.batch_size
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{len(self.data)} training images give no full batch of {config.batch_size}: lower "
                               "--batch_size, or train on more images (a larger --train_subset or --synthetic_size)")

    def _epoch_order(self, epoch):
        if epoch != self._order_epoch:
            c = self.config
            g = step_generator(c.seed, 1, epoch, torch.device("cpu"))
            self._order = epoch_order(self.data.labels, c.batch_size, self.group_size, c.group_by, g).to(self.device)
            self._order_epoch = epoch
        return self._order

    def micro_batches(self, step: int):
        """[(images, noise)] for this process: accum_steps micro-batches of the global batch of `step`."""
        c = self.config
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._epoch_order(epoch)[i * c.batch_size:(i + 1) * c.batch_size]
        g = step_generator(c.seed, 2, step, self.device)
        images = random_resized_crop_flip(normalize(self.data.images[idx], self.name), c.img_size, g)
        G = self.group_size
        noise = torch.rand(c.batch_size // G, c.num_patches, generator=g, device=self.device)
        m = c.batch_size // (c.accum_steps * self.world)
        out = []
        for a in range(c.accum_steps):
            j = a * self.world + self.rank
            out.append((images[j * m:(j + 1) * m], noise[j * m // G:(j + 1) * m // G]))
        return out


class FolderBatches:
    """An image folder through DataLoader workers (ImageNet-scale data); shards by DistributedSampler."""

    def __init__(self, config, device, rank: int, world: int):
        self.config, self.device, self.rank = config, device, rank
        self.group_size = resolve(config).group_size
        m = config.batch_size // (config.accum_steps * world)
        self.loader = imagefolder_loader(config.dataset_path, config.img_size, m, config.workers, config.seed,
                                         rank, world)
        self.steps_per_epoch = len(self.loader) // config.accum_steps
        if self.steps_per_epoch == 0:
            raise DatasetError(f"image folder {self.loader.dataset.root} holds {len(self.loader.dataset)} training "
                               f"images, fewer than one batch of {config.batch_size}: lower --batch_size or add images")
        self._epoch, self._iter = None, None

    def micro_batches(self, step: int):
        c = self.config
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:  # after a resume mid-epoch, skip the batches already seen
            self.loader.sampler.set_epoch(epoch)
            self._iter, self._epoch = read_batches(self.loader), epoch
            for _ in range(i * c.accum_steps):
                next(self._iter)
        g = step_generator(c.seed, 3, step * 1000 + self.rank, self.device)
        out = []
        for _ in range(c.accum_steps):
            images = next(self._iter)[0].to(self.device, non_blocking=True)
            out.append((images, torch.rand(len(images) // self.group_size, c.num_patches, generator=g, device=self.device)))
        return out
