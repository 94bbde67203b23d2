"""`make bench`: training-step throughput and peak memory of every method, and the MFU of ViT-B/16.

    python benchmarks/bench.py [--device cuda|cpu] [--out results/tables/bench.csv] [--compile]

1. The preset model of the device (`gpu` preset on CUDA, `cpu` preset on a CPU) at its preset batch: one
   full training step (forward, backward, AdamW; data already on the device) of MAE, naive mixing, MixedAE
   compose and full, in fp32 and in bf16 autocast, all alternated step by step so that drift hits all alike.
   img/s, median step time, ratio to MAE in the same precision and to the same method in fp32 (medians over
   rounds of the two steps' ratio), peak memory (CUDA: max allocated; CPU: peak RSS of a process that runs
   one step of that method alone). `preset_path` marks the precision the preset trains in on this device
   (config.native_precision).
2. ViT-B/16 at 224 px (the paper's model), MAE and MixedAE, in the preset's precision: FLOPs of one step counted by torch's
   FlopCounterMode (forward + backward, as executed), divided by the median step time, over the
   device's dense bf16 peak (known GPUs only; none for CPUs): the model FLOP utilisation.

Rows replace those of the same device in the CSV; every row carries its provenance. The benchmark writes the
CSV only: `make reproduce` renders it into results/README.md and the docs' step-cost numbers.
"""
import argparse
import dataclasses
import re
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixedae_core.config import PRECISIONS, make_config
from mixedae_core.lab.provenance import REPO, provenance
from mixedae_core.lab.timing import TimedStep, alternated_rounds, bench_key, paired_ratio

VARIANTS = {"mae": dict(method="mae"), "naive": dict(method="naive"), "mixedae": dict(method="mixedae"),
            "mixedae_full": dict(method="mixedae", mix_mode="full")}
DTYPE = {"fp32": "fp32", "bf16": "bf16 autocast"}
VIT_B = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), FLOP/s; matched as whole words
# in the order given, so that "H100 PCIe" is not taken for an SXM H100 nor "L40" for an L4.
PEAK_BF16 = [(r"H100 PCIe", 756e12), (r"H100 NVL", 835e12), (r"H100", 989e12), (r"GH200", 989e12),
             (r"H200 NVL", 835e12), (r"H200", 989e12), (r"A100", 312e12), (r"L40S", 362e12), (r"L4", 121e12)]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for pattern, v in PEAK_BF16 if re.search(rf"\b{pattern}\b", name)), None)


def _proc_status_mib(key: str) -> float:
    # /proc, not getrusage: Linux carries ru_maxrss across exec, so a child would report its parent's peak
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(key + ":")) / 1024


def _cpu_peak_rss_mib(config_dict: dict, batch: int) -> float:
    """Peak resident memory of a fresh process running two steps (the optimizer state appears in the
    first), above what the process held before building the model (Python, torch, timm)."""
    from mixedae_core.config import Config
    torch.set_num_threads(1)
    before = _proc_status_mib("VmRSS")
    step = TimedStep(Config(**config_dict), batch, "cpu")
    step()
    step()
    return _proc_status_mib("VmHWM") - before


def peak_memory_mib(config, batch: int, device: torch.device, step: TimedStep | None) -> tuple[float, str]:
    if device.type == "cuda":
        # the other methods' models stay resident: count this model's weights and optimizer state, plus what
        # its step allocates on top of everything resident
        optimizer_state = step.step.optimizer.state.values()
        tensors = list(step.model.parameters()) + [t for s in optimizer_state for t in s.values()
                                                   if torch.is_tensor(t)] + [step.images, step.noise]
        own = sum(t.numel() * t.element_size() for t in tensors)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (own + torch.cuda.max_memory_allocated(device) - resident) / 2 ** 20, "CUDA allocated, own peak"
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_cpu_peak_rss_mib, dataclasses.asdict(config), batch).result(), \
            "peak RSS of a process, above its imports"


def count_flops(fn) -> int:
    """FLOPs of fn() as executed. Attention runs through SDPA's math backend here: FlopCounterMode has no
    formula for the fused CPU kernel and would leave attention out."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()  # callers pass an uncompiled step: the counter cannot see inside compiled kernels
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "results" / "tables" / "bench.csv"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model (CUDA)")
    ap.add_argument("--skip-vit-b", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps
    warmup = 5 if cuda else 1
    preset = "gpu" if cuda else "cpu"
    base = make_config(preset, device=device.type)
    batch = base.batch_size
    common = {**provenance(device), "compiled": args.compile}
    rows = []

    configs = {(name, precision): dataclasses.replace(base, precision=precision, **v)
               for precision in PRECISIONS for name, v in VARIANTS.items()}
    stepper = {key: TimedStep(c, batch, device, args.compile) for key, c in configs.items()}
    rounds = alternated_rounds(stepper, steps, warmup)
    for (name, precision), c in configs.items():
        median = statistics.median(rounds[name, precision])
        memory, memory_kind = peak_memory_mib(c, batch, device, stepper[name, precision])
        to_mae, to_fp32 = paired_ratio(rounds, (name, precision), ("mae", precision)), \
            paired_ratio(rounds, (name, precision), (name, "fp32"))
        rows.append({"benchmark": f"{preset} preset model", "model_key": bench_key(c), "variant": name,
                     "dtype": DTYPE[precision], "preset_path": precision == base.precision, "batch": batch,
                     "steps": steps, "img_per_s": batch / median, "step_ms": 1e3 * median, "ratio_to_mae": to_mae,
                     "ratio_to_fp32": to_fp32, "peak_memory_mib": memory, "memory_kind": memory_kind})
        print(f"{preset} model {name:13s} {precision} {batch / median:9.0f} img/s  {1e3 * median:8.1f} ms  "
              f"{to_mae:.2f}x MAE  {to_fp32:.2f}x fp32  peak {memory:8.0f} MiB ({memory_kind})", flush=True)
    del stepper

    if not args.skip_vit_b:
        vit_batch, vit_steps = (128, steps) if cuda else (4, 2)
        vit_configs = {name: make_config("imagenet", device=device.type, precision=base.precision,
                                         **VARIANTS[name], **VIT_B) for name in ("mae", "mixedae")}
        vit = {name: TimedStep(c, vit_batch, device, args.compile) for name, c in vit_configs.items()}
        rounds = alternated_rounds(vit, vit_steps, 2 if cuda else 1)
        medians = {name: statistics.median(ts) for name, ts in rounds.items()}
        peak = peak_flops(device)
        for name, step in vit.items():
            flops = count_flops(step if not args.compile else TimedStep(vit_configs[name], vit_batch, device))
            achieved = flops / medians[name]
            rows.append({"benchmark": "ViT-B/16 224 px", "variant": name, "dtype": DTYPE[base.precision],
                         "preset_path": True, "batch": vit_batch, "steps": vit_steps,
                         "img_per_s": vit_batch / medians[name], "step_ms": 1e3 * medians[name],
                         "ratio_to_mae": paired_ratio(rounds, name, "mae"), "tflop_per_step": flops / 1e12,
                         "achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12 if peak else None,
                         "mfu": achieved / peak if peak else None})
            print(f"ViT-B/16 {name:8s} {vit_batch / medians[name]:8.1f} img/s  {flops / 1e12:.2f} TFLOP/step  "
                  f"{achieved / 1e12:.2f} TFLOP/s  MFU {f'{achieved / peak:.1%}' if peak else 'n/a (no known peak)'}",
                  flush=True)

    table = pd.DataFrame([{**r, **common} for r in rows])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the rows of other devices
        old = pd.read_csv(out)
        table = pd.concat([old[old["device"] != common["device"]], table], ignore_index=True)
    table.to_csv(out, index=False, float_format="%.6g")
    print(f"written to {out} (`make reproduce` shows it in results/README.md)")


if __name__ == "__main__":
    sys.exit(main())
