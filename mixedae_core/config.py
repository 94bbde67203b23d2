"""The configs: `ModelConfig` (the model's switches and their validation), `Config` (one pre-training run:
model switches + data + optimisation), `EvalConfig` (the evaluation recipe) and the named presets, each
with everything that differs between presets.

`Config` extends `ModelConfig`, so `build_model(config)` takes it as it is. The CLI, the presets and the
notebooks all produce a `Config`; every field can be overridden by name. The comment after each field is
its documentation: the command line's `--help` is generated from it.
"""
import dataclasses
import inspect
import io
import math
import numbers
import tokenize
from dataclasses import dataclass

import torch

from .data import NORMALIZATION, dataset_channels
from .switches import GLOBAL, MIXEDAE_SWITCHES, MIXING_METHODS, canonical, mixing_group_size, resolve

# Fields that change how a run is logged, fetched or checkpointed, not what it computes: they are left out of
# the run key, and a run may be resumed with other values of them.
NOT_IN_RUN_KEY = ("download", "workers", "log_every", "checkpoint_minutes")
# Fields added after records existed, with the value every earlier run computed with: at that value they are
# left out of the run key, so earlier records keep their names.
LEGACY_VALUES = {"precision": "fp32", "cls_reads_itself": True}
PRECISIONS = ("fp32", "bf16")  # what a run computes in; "auto" is resolved to one of them (native_precision)


def native_precision(device: str) -> str:
    """bf16 where the device multiplies bf16 natively, else fp32: a CPU without AVX512-BF16 or AMX emulates bf16
    matmuls, many times slower than fp32's (docs/METHOD.md, "Precision")."""
    if device_type(device) == "cuda":
        return "bf16"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def device_name_error(device: str) -> str | None:
    """Why `device` names no device this code knows (None when it does); whether the machine has it is
    train.available_device's question."""
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return None
    return f"device must be auto, cpu, cuda or cuda:N, got {device!r}"


def device_type(device: str) -> str:
    """'cpu' or 'cuda': what a run computes depends on the kind of device (its kernels), not its index."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


METHODS = ("mae", "naive", "mixedae")


def check_finite(config, cls, bad):
    """NaN fails every comparison, so a check such as `blr <= 0` lets it through: refuse NaN and infinity
    in every float field of dataclass `cls` first."""
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f"{f.name} must be a finite number, got {value}")


def at_least(config, names, minimum, bad):
    """Each named field is None (where the field allows it) or >= minimum."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            bad(f"{name} must be >= {minimum}, got {value}")


def at_most(config, limits: dict, bad):
    """Each named field is None or <= its limit: values past them would allocate beyond any machine's memory
    (or overflow a generator's seed) before failing."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if value is not None and value > limit:
            bad(f"{name} must be <= {limit:,}, got {value:,}")


@dataclass
class ModelConfig:
    """Every model switch. MAE sizes use the official MAE constructor's keyword names.

    The switches in MIXEDAE_SWITCHES (switches.py) change MixedAE only: another method refuses any value but their default.
    `topk`, `homologous_layers` and `seg_embed` default to None, "the method's default".
    """
    method: str = "mixedae"           # mae | naive (MAE + naive mixing) | mixedae
    img_size: int = 32                # input images are img_size x img_size
    patch_size: int = 4               # patch side; N = (img_size / patch_size)^2 positions
    in_chans: int = 3                 # image channels
    embed_dim: int = 192              # encoder width
    depth: int = 12                   # encoder blocks
    num_heads: int = 3                # encoder attention heads
    decoder_embed_dim: int = 128      # decoder width
    decoder_depth: int = 4            # decoder blocks
    decoder_num_heads: int = 4        # decoder attention heads
    mlp_ratio: float = 4.0            # MLP hidden width / block width
    norm_pix_loss: bool = True        # reconstruct per-patch standardised pixels (MAE's norm_pix_loss)
    mask_ratio: float = 0.75          # MAE only: share of patches hidden (mixing sets visibility via mix_ratio)
    mix_ratio: float = 0.25           # r: share of positions one image fills; G = 1/r images per group
    mix_mode: str = "compose"         # compose (one sequence per group) | full (G sequences per group)
    seg_embed: str | None = None      # encoder | decoder | none; None = 'encoder' for mixedae
    topk: int | str | None = None     # keys kept per patch query in the homologous layers: K, or 'global' (every key); None = rN (+ 1 for a shared [CLS], which patches may read)
    homologous_layers: tuple[int, ...] | None = None  # encoder blocks with TopK attention; None = all
    hc_form: str = "attention"        # homologous loss on: attention (own-image attention mass) | features (SupCon)
    hc_weight: float = 1.0            # weight of the homologous loss in the total loss; 0: no homologous loss (docs/METHOD.md, section 6)
    hc_temperature: float = 0.1       # temperature of the SupCon loss (hc_form=features)
    hc_proj_dim: int = 128            # output width of the SupCon projection head (hc_form=features)
    cls_per_image: bool = True        # mixing: each image has its own [CLS], which reads that image only, is read by no patch and starts only its decoder (False: one shared [CLS] per sequence, as a ViT's)
    cls_reads_itself: bool = False    # mixing with cls_per_image: the [CLS] query may read its own key too (True: the design before, whose [CLS] read its image in block 0 and then itself)

    def __post_init__(self):
        if self.homologous_layers is not None:
            self.homologous_layers = tuple(int(i) for i in self.homologous_layers)
        if isinstance(self.topk, numbers.Integral) and not isinstance(self.topk, bool):
            self.topk = int(self.topk)  # numpy's integers too: a run key is JSON
        self.validate()

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def without_mixing(self) -> "ModelConfig":
        """Plain MAE of the same sizes (and, for a Config, data and seed): every method's shared init."""
        return dataclasses.replace(self, method="mae", mix_mode="compose", **MIXEDAE_DEFAULTS)

    def validate(self):
        def bad(msg):
            raise ValueError(f"ModelConfig: {msg}")

        check_finite(self, ModelConfig, bad)
        self.validate_sizes(bad)
        self.validate_switches(bad)
        if self.method in MIXING_METHODS:
            self.validate_mixing(bad)

    def validate_sizes(self, bad):
        at_least(self, ("img_size", "patch_size", "in_chans", "embed_dim", "num_heads", "decoder_embed_dim",
                        "decoder_num_heads", "hc_proj_dim"), 1, bad)
        at_least(self, ("depth", "decoder_depth", "hc_weight"), 0, bad)  # no blocks: a patch-wise model
        at_most(self, {"img_size": 4096, "in_chans": 64, "embed_dim": 8192, "decoder_embed_dim": 8192, "depth": 256,
                       "decoder_depth": 256, "hc_proj_dim": 8192, "mlp_ratio": 64}, bad)
        if self.mlp_ratio <= 0:
            bad(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.img_size % self.patch_size:
            bad(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.num_patches > 4096:  # attention memory grows with its square
            bad(f"(img_size / patch_size)^2 = {self.num_patches} patches; at most 4096: raise patch_size")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            bad("embed_dim must be divisible by num_heads and decoder_embed_dim by decoder_num_heads")
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            bad("embed_dim and decoder_embed_dim must be multiples of 4 (2-D sin-cos position embedding)")

    def validate_switches(self, bad):
        if self.method not in METHODS:
            bad(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.mask_ratio < 1:
            bad(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mix_mode not in ("compose", "full"):
            bad(f"mix_mode must be 'compose' or 'full', got {self.mix_mode!r}")
        if self.seg_embed not in (None, "encoder", "decoder", "none"):
            bad(f"seg_embed must be 'encoder', 'decoder' or 'none', got {self.seg_embed!r}")
        if self.hc_form not in ("attention", "features"):
            bad(f"hc_form must be 'attention' or 'features', got {self.hc_form!r}")
        if self.hc_temperature <= 0:
            bad(f"hc_temperature must be > 0, got {self.hc_temperature}")
        if self.method != "mixedae":
            for name, default in MIXEDAE_DEFAULTS.items():
                value = getattr(self, name)
                if value != default and not (name == "seg_embed" and value == "none"):
                    bad(f"{name} is a MixedAE switch; use method='mixedae' or leave {name} at its default {default!r}")
        if self.method == "mae" and self.mix_mode != "compose":
            bad("mix_mode is a mixing switch; method='mae' does not mix")

    def validate_mixing(self, bad):
        G = mixing_group_size(self)
        if G < 2 or abs(G * self.mix_ratio - 1) > 1e-9:
            bad(f"mix_ratio must be 1/G for an integer G >= 2 (0.5, 0.25, ...), got {self.mix_ratio}")
        if self.num_patches % G:
            bad(f"{self.num_patches} patches cannot be split among G = {G} images; "
                f"choose img_size/patch_size so that (img_size/patch_size)^2 is divisible by {G}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, (int, str, type(None))):
            bad(f"topk must be a number of keys or {GLOBAL!r}, got {self.topk!r}")
        if isinstance(self.topk, str) and self.topk != GLOBAL:
            bad(f"topk must be a number of keys or {GLOBAL!r} (every key), or null for the default rN; got {self.topk!r}")
        for i in self.homologous_layers or ():
            if not 0 <= i < self.depth:
                bad(f"homologous_layers must index encoder blocks 0..{self.depth - 1}, got {i}")
        try:
            resolve(self)  # what only the resolved switches can tell: K's range
        except ValueError as err:
            bad(str(err))


# The switches that change MixedAE only, at their defaults: every other method holds them there.
MIXEDAE_DEFAULTS = {name: ModelConfig.__dataclass_fields__[name].default for name in MIXEDAE_SWITCHES}


@dataclass
class Config(ModelConfig):
    """A pre-training run: the model's switches (ModelConfig) plus data and optimisation."""
    dataset: str = "fashion-mnist"    # fashion-mnist | cifar10 | cifar100 | stl10 | synthetic | imagefolder:PATH
    download: bool = False            # torchvision datasets: fetch them if missing (needs internet)
    train_subset: int | None = None   # use the first n training images (None: all)
    synthetic_size: int = 512         # images in the generated training set (dataset=synthetic)
    group_by: str = "random"          # mixing groups of random images, or 'class': groups of one class
    epochs: int = 1                   # passes over the training set
    max_steps: int | None = None      # stop after this many optimizer steps (None: all epochs)
    batch_size: int = 256             # images per optimizer step, summed over processes and accumulation
    accum_steps: int = 1              # micro-batches accumulated per optimizer step
    blr: float = 1.5e-4               # base learning rate: lr = blr * batch_size / 256, as MAE
    min_lr: float = 0.0               # learning rate at the end of the cosine schedule
    warmup_epochs: float = 0.0        # linear warm-up from 0, in epochs (fractions allowed)
    weight_decay: float = 0.05        # AdamW weight decay (not on norms, biases, tokens, embeddings)
    beta1: float = 0.9                # AdamW beta1
    beta2: float = 0.95               # AdamW beta2 (MAE's)
    seed: int = 0                     # init, batch order, augmentation and masking/mixing noise
    device: str = "auto"              # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "fp32"           # fp32 | bf16 (autocast: matmuls in bf16; softmax, norms, losses, weights fp32) | auto: bf16 where the device multiplies bf16 natively (CUDA; CPUs with AVX512-BF16 or AMX), else fp32; resolved when the config is made
    workers: int = 8                  # DataLoader workers (imagefolder only)
    log_every: int = 50               # steps between metric lines (and TopK-accuracy diagnostics)
    checkpoint_minutes: float = 5.0   # minutes between checkpoints inside an epoch (each epoch also ends with one)

    def __post_init__(self):
        if self.precision == "auto":
            self.precision = native_precision(self.device)
        super().__post_init__()

    @classmethod
    def from_dict(cls, fields: dict) -> "Config":
        """A Config as a run's config.json or checkpoint holds it; a field the file predates takes the value
        that run computed with (LEGACY_VALUES), not today's default."""
        return cls(**{**LEGACY_VALUES, **fields})

    @property
    def lr(self) -> float:
        return self.blr * self.batch_size / 256

    @property
    def dataset_kind(self) -> str:
        return self.dataset.split(":", 1)[0]

    @property
    def dataset_path(self) -> str:
        """PATH of imagefolder:PATH ('' for the other datasets)."""
        return self.dataset.partition(":")[2].strip()

    def validate(self):
        super().validate()

        def bad(msg):
            raise ValueError(f"Config: {msg}")

        kind = self.dataset_kind
        if kind not in NORMALIZATION:
            bad(f"dataset must be one of fashion-mnist, cifar10, cifar100, stl10, synthetic, imagefolder:PATH; "
                f"got {self.dataset!r}")
        if kind == "imagefolder" and not self.dataset_path:
            bad("imagefolder needs a path: --dataset imagefolder:/path/to/images")
        if kind != "synthetic" and dataset_channels(kind) != self.in_chans:
            bad(f"{kind} images have {dataset_channels(kind)} channel(s): set in_chans={dataset_channels(kind)}")
        if kind == "fashion-mnist" and self.img_size != 32:
            bad("fashion-mnist is padded to 32 x 32: set img_size=32")
        if self.group_by not in ("random", "class"):
            bad(f"group_by must be 'random' or 'class', got {self.group_by!r}")
        check_finite(self, Config, bad)
        at_least(self, ("epochs", "max_steps", "batch_size", "accum_steps", "log_every", "synthetic_size",
                        "train_subset"), 1, bad)
        at_least(self, ("min_lr", "weight_decay", "warmup_epochs", "workers", "checkpoint_minutes", "seed"), 0, bad)
        at_most(self, {"epochs": 10_000, "max_steps": 10 ** 9, "synthetic_size": 1_000_000, "batch_size": 2 ** 20,
                       "accum_steps": 2 ** 20, "seed": 2 ** 32 - 1, "workers": 256}, bad)
        if self.blr <= 0:
            bad(f"blr must be > 0, got {self.blr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        G = resolve(self).group_size
        if self.batch_size % (self.accum_steps * G):
            bad(f"batch_size {self.batch_size} must be divisible by accum_steps x G = {self.accum_steps} x {G}")
        if self.warmup_epochs > self.epochs:
            bad(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if device_name_error(self.device):
            bad(device_name_error(self.device))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_fields(self) -> dict:
        """The fields that decide what the run computes: canonical values, NOT_IN_RUN_KEY left out, the
        device as its kind."""
        fields = {k: v for k, v in canonical(self).to_dict().items()
                  if k not in NOT_IN_RUN_KEY and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])}
        return {**fields, "device": device_type(fields["device"])}


@dataclass
class EvalConfig:
    """The evaluation recipe of a pre-trained encoder (frozen features, object awareness, pretext scores)."""
    knn_k: int = 20                   # neighbours of the weighted kNN classifier
    knn_temperature: float = 0.07     # temperature of the kNN vote weights (DINO's)
    probe_l2: float = 1e-4            # L2 penalty of the linear probe (logistic regression, standardised features)
    probe_max_iter: int = 300         # L-BFGS iterations of the linear probe (full batch)
    train_subset: int | None = None   # first n training images for kNN and probe (None: all)
    test_subset: int | None = None    # first n test images (None: all)
    attention_layer: int = -1         # encoder block whose [CLS] attention the object score reads
    attention_mass: float = 0.6       # share of the [CLS] attention the attention region holds
    batch_size: int = 500             # images per forward pass
    baselines: bool = True            # also evaluate raw pixels and the randomly initialised encoder
    pretext_images: int = 512         # test images for the shared-position loss and the cross-image reliance
    control_epochs: int = 0           # epochs of the supervised positive control of the object-awareness measure (0: none)
    control_seed: int = 0             # the control is trained once, recorded with this seed's MAE run
    finetune_labels: int = 0          # labelled training images of the fine-tuning metric, class-balanced (0: not measured)
    finetune_epochs: int = 10         # epochs of fine-tuning on them (MAE's recipe, finetune.py)
    finetune_layer_decay: float = 0.75  # layer-wise lr decay of fine-tuning and of the dense read-out
    finetune_batch: int = 128         # batch of fine-tuning and of the dense read-out
    noise_seeds: int = 3              # fine-tuning seeds of the control seed's MAE run: the paper metrics' own noise
    dense_scenes: int = 0             # labelled training scenes of the dense metric (0: not measured)
    dense_epochs: int = 10            # epochs of the dense read-out's fine-tuning on them
    dense_test_scenes: int = 2000     # test scenes of the dense metric
    dense_object_size: int = 22       # side of an object in a scene (px)
    dense_control_scenes: int = 4000  # scenes the dense metric's positive control is trained on
    dense_control_epochs: int = 30    # its epochs of training on their labels, before the dense read-out

    def __post_init__(self):
        self.validate()

    def validate(self):
        def bad(msg):
            raise ValueError(f"EvalConfig: {msg}")

        check_finite(self, EvalConfig, bad)
        at_least(self, ("knn_k", "probe_max_iter", "train_subset", "test_subset", "batch_size", "pretext_images"),
                 1, bad)
        at_least(self, ("control_epochs", "control_seed", "finetune_labels", "dense_scenes"), 0, bad)
        at_least(self, ("finetune_epochs", "finetune_batch", "noise_seeds", "dense_epochs", "dense_test_scenes", "dense_object_size",
                        "dense_control_scenes", "dense_control_epochs"), 1, bad)
        if not 0 < self.finetune_layer_decay <= 1:
            bad(f"finetune_layer_decay must be in (0, 1], got {self.finetune_layer_decay}")
        if self.knn_temperature <= 0:
            bad(f"knn_temperature must be > 0, got {self.knn_temperature}")
        if self.probe_l2 < 0:
            bad(f"probe_l2 must be >= 0, got {self.probe_l2}")
        if not 0 < self.attention_mass <= 1:
            bad(f"attention_mass must be in (0, 1], got {self.attention_mass}")


# ------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """Everything that differs between presets, in one place."""
    train: dict                       # Config fields that differ from the defaults above
    eval: EvalConfig                  # the evaluation recipe of its runs' records
    seeds: tuple[int, ...]            # the seeds of the notebooks' headline comparisons
    title: str                        # its section heading in results/README.md
    note: str = ""                    # what its numbers can and cannot show, under that heading
    committed: bool = True            # its results belong in the committed results/README.md (a check's do not)
    curve_epochs: tuple[int, ...] = ()  # epochs after which the headline runs record a learning-curve point

    def __post_init__(self):
        epochs = self.train.get("epochs", Config.epochs)
        if any(not 1 <= e < epochs for e in self.curve_epochs):  # the last epoch's point is the final evaluation
            raise ValueError(f"Preset: curve_epochs {self.curve_epochs} must lie in 1..{epochs - 1} (epochs {epochs})")


# MLP ratio 2 and one decoder block: at width 128 the MLPs and the 65-token decoder are most of the step.
# Measured on 2 cores, MAE, one 60k-image epoch at blr 3e-3: this shape trains in 62 % of the time of MLP ratio 4
# with two decoder blocks, for kNN [CLS] 73.1 vs 72.2 and content ratio 0.874 vs 0.860.
FASHION_CPU_MODEL = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                         decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)
# The paper's metrics (transfer.py) on a 2-core CPU: about 10 min of one worker per run (docs/METHOD.md, "Fine-tuning"
# and "Dense transfer"): 10 % of the labels fine-tuned 8 epochs; 2500 labelled scenes of 22 px objects, 10 epochs.
PAPER_METRICS_CPU = dict(finetune_labels=6000, finetune_epochs=8, dense_scenes=2500, dense_epochs=10,
                         dense_object_size=22, dense_control_scenes=4000, dense_control_epochs=20)
# On a GPU the same protocols trained to convergence.
PAPER_METRICS_GPU = dict(finetune_labels=6000, finetune_epochs=30, dense_scenes=4000, dense_epochs=30,
                         dense_object_size=22, dense_control_scenes=8000, dense_control_epochs=40)
PRESETS = {  # in the order results/README.md shows them: the headline first
    "gpu": Preset(
        # One GPU: the suite's runs side by side (`make reproduce PRESET=gpu WORKERS=6`) in about ten minutes of
        # an H200. Provisional sizing from one-process H200 timings at batch 512 (MAE 11.4k img/s, MixedAE 9.1k,
        # full ~1.4x MixedAE's step) and an assumed ~30k img/s over 6 runs side by side: the suite costs about
        # 18 MAE runs, 18 x 10 epochs x 60k images / 30k img/s = 360 s. benchmarks/side_by_side.py measures it.
        train=dict(dataset="fashion-mnist", img_size=32, patch_size=4, in_chans=1, embed_dim=192, depth=12,
                   num_heads=3, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4,
                   epochs=10, batch_size=512, blr=5e-4, warmup_epochs=1, log_every=20, device="cuda", precision="bf16"),
        eval=EvalConfig(batch_size=2000, pretext_images=2048, control_epochs=10, **PAPER_METRICS_GPU), seeds=(0, 1, 2),
        title="Headline: GPU preset",
        note="GPU preset: the scale at which the paper's effects can exceed seed noise."),
    "long": Preset(
        # The cpu preset's model and data, five epochs: the shortest schedule at which every headline model uses its
        # input and has learned features. Measured before it (one seed, an 8-epoch schedule of this model): content
        # ratio at epochs 1 / 4 / 8 MAE 0.84 / 0.70 / 0.67, MixedAE 0.89 / 0.74 / 0.68; mean-pooled kNN MAE
        # 73.6 / 80.7 / 82.3, MixedAE 68.2 / 80.2 / 79.9. A 4-epoch schedule of this preset (all 23 runs) met the
        # content-ratio bar on all nine headline runs, but MixedAE seed 0's kNN [CLS] ended at random init + 9.8
        # points (bar 10; +0.4 in its last epoch), so five. Its own curves (epochs 1-4, then the final evaluation)
        # are in notebook 01.
        # Evaluation on all 10k test images, so that a test accuracy's binomial noise (notebook 01 states it) sits
        # below the seed spread; kNN and probe fitted on the first 10k training images, since encoding 60k costs
        # 3 min per point on one core. The positive control of the object measure trains twice the cpu preset's.
        train=dict(dataset="fashion-mnist", **FASHION_CPU_MODEL, epochs=5, batch_size=128,
                   blr=2e-3, warmup_epochs=0.25, log_every=25, device="cpu", precision="fp32"),
        eval=EvalConfig(train_subset=10_000, control_epochs=4, **PAPER_METRICS_CPU), seeds=(0, 1, 2),
        curve_epochs=(1, 2, 3, 4),
        title="Headline: long CPU preset (5 epochs)",
        note="Long CPU preset: the cpu preset's model trained five epochs, long enough for every headline model to "
             "use its input (notebook 01's learning curves), evaluated on the whole test set. Still a small model "
             "on small images for minutes of a 2-core CPU: the paper trained ViT-B/16 for hundreds of epochs; read "
             "each verdict against the seed spread beside it. `make reproduce PRESET=long BUDGET=<seconds>` runs it "
             "in sittings."),
    "cpu": Preset(
        # Fashion-MNIST's 60k training images, one epoch (468 steps), for every run of the suite: at 187 steps the
        # models ignored their input. blr 2e-3 measured against 3e-3 (model above, seed 0, one epoch): MAE kNN
        # [CLS] 73.4 / 73.1 (random init 62.4), content ratio 0.891 / 0.874; MixedAE kNN 70.6 / 61.2, TopK 0.87 /
        # 0.93. 3e-3 wrecks MixedAE's [CLS], so 2e-3. `make reproduce` trains every run of the suite (the headline's 3 seeds, one
        # seed per ablation), 2 side by side: each trains in 3-4 min and evaluates in about 1 min on 2 cores.
        train=dict(dataset="fashion-mnist", **FASHION_CPU_MODEL, epochs=1, batch_size=128,
                   blr=2e-3, warmup_epochs=0.1, log_every=25, device="cpu", precision="fp32"),
        eval=EvalConfig(train_subset=5000, test_subset=1000, control_epochs=2, **PAPER_METRICS_CPU), seeds=(0, 1, 2),
        title="CPU preset (a demonstration of the pipeline, not evidence)",
        note="CPU preset: a runnable demonstration of the pipeline on a 2-core machine. Each model trains for "
             "minutes, far from the paper's hundreds of epochs: read every verdict against the seed spread "
             "beside it; they say little about the paper's claims."),
    "smoke": Preset(
        # Seconds on a CPU: a functional check of the whole pipeline (tests, CI). workers=0: an image folder's
        # few small images decode faster in the process than DataLoader workers start.
        train=dict(dataset="synthetic", synthetic_size=128, img_size=16, patch_size=4, in_chans=3, embed_dim=32,
                   depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                   epochs=2, batch_size=16, blr=1e-3, log_every=2, device="cpu", workers=0),
        eval=EvalConfig(batch_size=64, probe_max_iter=50, control_epochs=1, finetune_labels=64, finetune_epochs=1,
                        finetune_batch=16, dense_scenes=32, dense_epochs=1, dense_test_scenes=32, dense_object_size=8,
                        dense_control_scenes=32, dense_control_epochs=1), seeds=(0, 1, 2), curve_epochs=(1,),
        title="Smoke preset (functional check)", note="Smoke preset: functional check only; the numbers mean nothing.",
        committed=False),
    "imagenet": Preset(
        # The paper's ImageNet-1K recipe (MAE's): ViT-B/16, effective batch 4096, 800 epochs; train/ and val/
        # in the folder (data.folder_split).
        train=dict(dataset="imagefolder:data/imagenet", img_size=224, patch_size=16, in_chans=3,
                   embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                   decoder_num_heads=16, epochs=800, batch_size=4096, accum_steps=8, blr=1.5e-4,
                   warmup_epochs=40, weight_decay=0.05, workers=10, log_every=100, device="cuda",
                   precision="bf16"),
        eval=EvalConfig(), seeds=(0,), title="ImageNet preset"),
}


def dataset_fields(dataset: str) -> dict:
    """The Config fields that training on `dataset` fixes: the dataset, its images' channels and, for
    Fashion-MNIST (padded to 32 px), img_size 32. `make_config` lays them over the preset, under the explicit
    overrides, so a preset trains on any dataset without also naming its channels."""
    kind = dataset.split(":", 1)[0]
    fields = {"dataset": dataset}
    if kind in NORMALIZATION and kind != "synthetic":  # generated images take any channel count
        fields["in_chans"] = dataset_channels(kind)
    if kind == "fashion-mnist":
        fields["img_size"] = 32
    return fields


def make_config(preset: str = "cpu", **overrides) -> Config:
    """A preset with any field overridden by name (a `dataset` brings its `dataset_fields`); unknown names raise
    a ValueError listing the fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))}; "
                         f"valid fields: {', '.join(f.name for f in dataclasses.fields(Config))}")
    implied = dataset_fields(overrides["dataset"]) if "dataset" in overrides else {}
    return Config(**{**PRESETS[preset].train, **implied, **overrides})


def field_docs(cls) -> dict[str, str]:
    """{field name: the comment after it in the class body} for a dataclass and its bases."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(klass)).readline)
        name = None
        for tok in tokens:
            if tok.type == tokenize.NL or tok.type == tokenize.NEWLINE:
                name = None
            elif tok.type == tokenize.NAME and name is None and tok.start[1] == 4:
                name = tok.string  # the first name of a line in the class body
            elif tok.type == tokenize.COMMENT and name in klass.__dataclass_fields__:
                docs[name] = tok.string.lstrip("# ").strip()
    return docs
