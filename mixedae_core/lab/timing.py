"""Step-time measurements that compare methods fairly: one process, fixed on-device images, the methods
alternated step by step so that drift (clocks, other load) hits all alike. Used by `make bench` and by
notebook 04's cost claim (the runs' own wall times are taken side by side with other runs)."""
import dataclasses
import statistics
import time

import torch

from ..config import Config, ModelConfig
from ..model import build_model
from ..train import TrainStep
from .runs import run_key

# What a step's time depends on besides the method: the model's shape, the batch and the kind of device.
BENCH_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("method", "mix_mode")) \
    + ("batch_size", "device", "precision")


def bench_key(config: Config) -> str:
    """Names the model a `make bench` row timed, so that a later plan reads only rows of its own model."""
    return run_key(config, "bench", fields=BENCH_KEY_FIELDS)


class TimedStep:
    """The training step of a config's model (train.TrainStep: the optimizer and precision that train)
    on fixed images and masking/mixing noise."""

    def __init__(self, config: Config, batch: int, device, compile_model: bool = False):
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.model = build_model(config).to(self.device).train()
        self.step = TrainStep(self.model, config, compile_model=compile_model)
        self.images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=self.device)
        self.noise = torch.rand(batch // self.model.switches.group_size, config.num_patches, device=self.device)
        self.lr = config.lr

    def __call__(self):
        self.step([(self.images, self.noise)], self.lr)

    def timed(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def alternated_rounds(steps: dict, n: int, warmup: int = 1) -> dict[str, list[float]]:
    """{name: seconds of each timed round} of TimedSteps, run in turn for warmup + n rounds."""
    times = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t = step.timed()
            if i >= warmup:
                times[name].append(t)
    return times


def alternated_step_times(steps: dict, n: int, warmup: int = 1) -> dict:
    """{name: median seconds per step} of TimedSteps, run in turn for warmup + n rounds."""
    return {name: statistics.median(ts) for name, ts in alternated_rounds(steps, n, warmup).items()}


def paired_ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of name's step time over reference's in the same round: drift that spans a round
    (clocks, other load) cancels, which a ratio of medians leaves in."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))
