"""The files of a run directory: what `train()` writes and what evaluation, notebooks and tools read.

    config.json     the Config of the run
    metrics.jsonl   one JSON object per logged step ("kind": "step") and per epoch ("kind": "epoch")
    checkpoint.pt   model, optimizer, loop state and RNG (written atomically)
    summary.json    written last, once the run has finished: steps, images, wall time, final epoch means

Writes go beside the file and are renamed over it, so a reader never sees half a file.
"""
import json
import os
from pathlib import Path

import torch

from .config import Config
from .model import build_model

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"


def write_text_atomic(path: Path, text: str):
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write the same file
    tmp.write_text(text)
    os.replace(tmp, path)


def save_atomic(obj, path: Path):
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_finished(run_dir) -> bool:
    """Finished and still holding its checkpoint (the model, not only the numbers)."""
    return (Path(run_dir) / SUMMARY).exists() and (Path(run_dir) / CHECKPOINT).exists()


def load_model(run_dir, device="cpu"):
    """(model in eval mode, Config) of a run directory's newest checkpoint."""
    ckpt = torch.load(Path(run_dir) / CHECKPOINT, map_location=device, weights_only=False)
    config = Config(**ckpt["config"])
    model = build_model(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config
