"""How many training runs to put side by side on one device: aggregate img/s of W processes training at once.

    python benchmarks/side_by_side.py --preset gpu --workers 1 4 8 --methods mae mixedae [--batch 512 1024]

Each process builds what train() builds (the preset's data on the device, its model, train.TrainStep) and,
once every process is ready, runs `--steps` training steps with augmentation and masking noise. The
aggregate is all images over the span from the first start to the last end; `ready_s` is the slowest
process's time from its start to its first timed step (data on the device, warm-up, compilation), the
fixed cost of a run. This sizes the campaign's `--workers` and the gpu preset; results go to
results/tables/side_by_side.csv with provenance.
"""
import argparse
import dataclasses
import queue
import time
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from mixedae_core.config import Config, make_config
from mixedae_core.data import training_batches
from mixedae_core.lab.provenance import REPO, provenance
from mixedae_core.model import build_model
from mixedae_core.train import TrainStep, resolve_device


def _train_steps(config_dict: dict, steps: int, warmup: int, compile_model: bool, barrier, out):
    began = time.time()
    c = Config(**config_dict)
    device = resolve_device(c)
    torch.manual_seed(c.seed)
    model = build_model(c).to(device).train()
    batches = training_batches(c, device)
    train_step = TrainStep(model, c, compile_model=compile_model)

    def step(s):
        train_step(batches.micro_batches(s), c.lr)

    for s in range(warmup):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ready = time.time() - began  # data on the device, model built, warm-up steps (and compilation) done
    barrier.wait(timeout=300)
    start = time.time()
    for s in range(warmup, warmup + steps):
        step(s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.put((start, time.time(), ready))


def aggregate_img_per_s(config: Config, workers: int, steps: int, warmup: int, compile_model: bool):
    """(aggregate img/s of the timed steps, the slowest worker's seconds from its start to its first timed step)"""
    ctx = get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_train_steps, args=(dataclasses.asdict(config), steps, warmup, compile_model,
                                                    barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    spans = []
    try:  # a worker that dies (out of memory) would leave the others at the barrier: abort it, report
        while len(spans) < workers:
            try:
                spans.append(out.get(timeout=1))
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    barrier.abort()
                    raise RuntimeError(f"{workers} runs side by side: a worker failed (exit codes "
                                       f"{[p.exitcode for p in procs]})") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    span = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
    return workers * steps * config.batch_size / span, max(r for _, _, r in spans)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--methods", nargs="+", default=["mae", "mixedae"])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default=str(REPO / "results" / "tables" / "side_by_side.csv"))
    args = ap.parse_args()
    base = make_config(args.preset)
    device = resolve_device(base)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {k}: {v}\n" for k, v in provenance(device).items())
    rows = []
    for batch in args.batch or [base.batch_size]:
        for w in args.workers:  # the fewest runs side by side first: a later failure keeps them
            for method in args.methods:
                config = dataclasses.replace(base, method=method, batch_size=batch)
                try:
                    rate, ready = aggregate_img_per_s(config, w, args.steps, args.warmup, args.compile)
                except RuntimeError as err:
                    print(err, flush=True)
                    rate = ready = float("nan")
                rows.append({"preset": args.preset, "method": method, "batch": batch, "workers": w,
                             "compiled": args.compile, "aggregate_img_per_s": rate, "per_run_img_per_s": rate / w,
                             "ready_s": ready})
                print(f"{args.preset} {method:8s} batch {batch:5d} x {w} runs: {rate:9.0f} img/s together, "
                      f"{rate / w:8.0f} each, ready after {ready:.0f} s", flush=True)
                # after every row: a probe cut short by its time limit keeps what it measured
                out.write_text(header + pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
