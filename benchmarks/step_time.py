"""Forward+backward time of each method at equal batch, the methods alternated in one process.

    python benchmarks/step_time.py [--model tiny|cpu] [--batch 128] [--steps 10] [--device cpu|cuda]

Reports the median step time per method and its ratio to MAE (the paper: MixedAE costs 1.03x MAE on GPU).
"""
import argparse
import platform
import statistics
import time

import torch

from mixedae_core import ModelConfig, build_model

MODELS = {  # MAE-tiny (ViT-Tiny encoder) and the 1.3 M-parameter CPU model
    "tiny": dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=12, num_heads=3,
                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "cpu": dict(img_size=32, patch_size=4, in_chans=1, embed_dim=128, depth=6, num_heads=4,
                decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2),
}
VARIANTS = {"mae": dict(method="mae"), "naive": dict(method="naive"),
            "mixedae": dict(method="mixedae"), "mixedae_full": dict(method="mixedae", mix_mode="full")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=MODELS, default="tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {name: build_model(ModelConfig(**MODELS[args.model], **v)).to(device) for name, v in VARIANTS.items()}
    size = MODELS[args.model]
    imgs = torch.randn(args.batch, size["in_chans"], size["img_size"], size["img_size"], device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        for name, model in models.items():  # alternate so that drift hits every method alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast:
                loss = model(imgs).loss
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model={args.model} batch={args.batch} steps={args.steps} device={hw} torch={torch.__version__}")
    base = statistics.median(times["mae"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:13s} median {med * 1e3:8.1f} ms  {args.batch / med:8.0f} img/s  ratio to mae {med / base:.2f}x")


if __name__ == "__main__":
    main()
