"""The one config of a run (model switches + data + optimisation) and the named presets.

`Config` extends `ModelConfig`, so `build_model(config)` takes it as it is. The CLI, the presets and the
notebook parameters all produce a `Config`; every field can be overridden by name.
"""
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass

from .data import NORMALIZATION, dataset_channels
from .model import ModelConfig


@dataclass
class Config(ModelConfig):
    dataset: str = "fashion-mnist"    # fashion-mnist | cifar10 | cifar100 | stl10 | synthetic | imagefolder:PATH
    download: bool = False            # torchvision datasets: fetch them if missing
    train_subset: int | None = None   # use the first n training images (CPU presets)
    synthetic_size: int = 512         # images in the generated training set
    group_by: str = "random"          # mixing groups from random images, or 'class': same-class groups
    epochs: int = 1
    max_steps: int | None = None      # stop after this many optimizer steps (equal-compute comparisons)
    batch_size: int = 256             # images per optimizer step, summed over processes and accumulation
    accum_steps: int = 1
    blr: float = 1.5e-4               # lr = blr * batch_size / 256, as MAE
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    seed: int = 0
    device: str = "auto"              # auto = cuda when available, else cpu
    workers: int = 8                  # DataLoader workers (imagefolder only)
    log_every: int = 50               # steps between metric lines (and TopK-accuracy diagnostics)

    @property
    def lr(self) -> float:
        return self.blr * self.batch_size / 256

    @property
    def dataset_kind(self) -> str:
        return self.dataset.split(":", 1)[0]

    def validate(self):
        super().validate()

        def bad(msg):
            raise ValueError(f"Config: {msg}")

        kind = self.dataset_kind
        if kind not in NORMALIZATION:
            bad(f"dataset must be one of fashion-mnist, cifar10, cifar100, stl10, synthetic, imagefolder:PATH; "
                f"got {self.dataset!r}")
        if kind == "imagefolder" and not self.dataset.split(":", 1)[1:]:
            bad("imagefolder needs a path: --dataset imagefolder:/path/to/train")
        if kind != "synthetic" and dataset_channels(kind) != self.in_chans:
            bad(f"{kind} images have {dataset_channels(kind)} channel(s): set in_chans={dataset_channels(kind)}")
        if kind == "fashion-mnist" and self.img_size != 32:
            bad("fashion-mnist is padded to 32 x 32: set img_size=32")
        if self.group_by not in ("random", "class"):
            bad(f"group_by must be 'random' or 'class', got {self.group_by!r}")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "synthetic_size"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            bad(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.batch_size % (self.accum_steps * self.group_size):
            bad(f"batch_size {self.batch_size} must be divisible by accum_steps x G = "
                f"{self.accum_steps} x {self.group_size}")
        if self.blr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            bad("blr must be > 0; min_lr, weight_decay and warmup_epochs >= 0")
        if self.warmup_epochs > self.epochs:
            bad(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields that change how a run is logged or fetched, not what it computes: left out of the run key.
NOT_IN_RUN_KEY = ("download", "workers", "log_every")


def device_type(device: str) -> str:
    """'cpu' or 'cuda': what a run computes depends on the kind of device (fp32 vs bf16), not its index."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def run_key(config: Config, code_version: str, fields=None) -> str:
    """A short hash of everything that determines a run's result (or of the named `fields` only)."""
    fields = {k: v for k, v in config.to_dict().items()
              if k not in NOT_IN_RUN_KEY and (fields is None or k in fields)}
    if "device" in fields:
        fields["device"] = device_type(fields["device"])
    blob = json.dumps({"code": code_version, **fields}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ presets
FASHION_CPU_MODEL = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
                         decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2)
PRESETS = {
    # Seconds on a CPU: a functional check of the whole pipeline (tests, CI).
    "smoke": dict(dataset="synthetic", synthetic_size=128, img_size=16, patch_size=4, in_chans=3, embed_dim=32,
                  depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                  epochs=2, batch_size=16, blr=1e-3, log_every=2, device="cpu"),
    # The embedded default: the 1.3 M-parameter model on Fashion-MNIST. Sized so that `make reproduce`
    # (16 runs, 3 of them seeds of each method) fits an hour on a 2-core CPU: 24k images, one epoch,
    # about 1.5 min per compose run (measured: MAE 302 img/s, MixedAE 249, full 87 on 2 cores).
    "cpu": dict(dataset="fashion-mnist", **FASHION_CPU_MODEL, train_subset=24000, epochs=1, batch_size=128,
                blr=1e-3, warmup_epochs=0.1, log_every=25, device="cpu"),
    # One GPU: the 16 runs of the suite side by side (`make reproduce PRESET=gpu WORKERS=6`) in about ten
    # minutes of an H100. PROVISIONAL until a lent GPU measures it (scripts/gpu_suite.sh probe). Sized from
    # earlier H200 timings of one process at batch 512 (MAE 11.4k img/s, MixedAE 9.1k, full ~1.4x
    # MixedAE's step) and a hoped-for ~30k img/s over 6 runs side by side: the suite costs about 18 MAE
    # runs, 18 x 10 epochs x 60k images / 30k img/s = 360 s.
    "gpu": dict(dataset="fashion-mnist", img_size=32, patch_size=4, in_chans=1, embed_dim=192, depth=12,
                num_heads=3, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4,
                epochs=10, batch_size=512, blr=5e-4, warmup_epochs=1, log_every=20, device="cuda"),
    # The paper's ImageNet-1K recipe (MAE's): ViT-B/16, effective batch 4096, 800 epochs.
    "imagenet": dict(dataset="imagefolder:data/imagenet/train", img_size=224, patch_size=16, in_chans=3,
                     embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                     decoder_num_heads=16, epochs=800, batch_size=4096, accum_steps=8, blr=1.5e-4,
                     warmup_epochs=40, weight_decay=0.05, workers=10, log_every=100, device="cuda"),
}


def make_config(preset: str = "cpu", **overrides) -> Config:
    """A preset with any field overridden by name; unknown names raise a ValueError listing the fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))}; "
                         f"valid fields: {', '.join(f.name for f in dataclasses.fields(Config))}")
    return Config(**{**PRESETS[preset], **overrides})


def parse_value(cls, config_field: dataclasses.Field, text: str):
    """A CLI string as the type of a field of dataclass `cls` (int, float, bool, str, optional, int tuple)."""
    hint = typing.get_type_hints(cls)[config_field.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null", ""):
        return None
    if isinstance(hint, (types.UnionType, typing._UnionGenericAlias)):  # X | None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{config_field.name} takes true or false, got {text!r}")
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(int(t) for t in text.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"--{config_field.name} takes integers separated by commas, got {text!r}") from None
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f"--{config_field.name} takes a value of type {hint.__name__}, got {text!r}") from None
