"""Step-time measurements that compare methods fairly: one process, fixed on-device images, the methods
alternated step by step so that drift (clocks, other load) hits all alike. Used by `make bench` and by
notebook 04's cost claim (the runs' own wall times are taken side by side with other runs)."""
import statistics
import time

import torch

from .model import build_model
from .train import param_groups


class TrainStep:
    """One training step of a config's model on fixed images: forward, backward, AdamW (bf16 on CUDA)."""

    def __init__(self, config, batch: int, device, compile_model: bool = False):
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.model = build_model(config).to(self.device).train()
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(param_groups(self.model, 0.05), lr=1e-4, **fused)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.images = torch.randn(batch, config.in_chans, config.img_size, config.img_size, device=self.device)

    def __call__(self, compiled: bool = True):
        forward = self.forward if compiled else self.model
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = forward(self.images).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def alternated_step_times(steps: dict, n: int, warmup: int = 1) -> dict:
    """{name: median seconds per step} of TrainSteps, run in turn for warmup + n rounds."""
    times = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t = step.timed()
            if i >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}
