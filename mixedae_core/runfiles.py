"""The files of a run directory: what `train()` writes and what evaluation, notebooks and tools read.

    config.json     the Config of the run
    metrics.jsonl   one JSON object per logged step ("kind": "step") and per epoch ("kind": "epoch")
    checkpoint.pt   model, optimizer, loop state, RNG and the config it was trained with (written atomically at
                    every epoch's end and every `checkpoint_minutes` inside an epoch); a resume trusts its
                    config, not config.json
    summary.json    written last, once the run has finished: steps, images, wall time, final epoch means

Writes go beside the file and are renamed over it, so a reader never sees half a file.
"""
import json
import os
import pickle
from pathlib import Path

import torch

from .config import Config
from .model import build_model

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


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


def read_checkpoint(run_dir, device="cpu") -> dict:
    """A run directory's checkpoint.pt, its tensors on `device`; a damaged file is a CheckpointError naming it."""
    path = Path(run_dir) / CHECKPOINT
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # what torch.load raises for a damaged file
        cause = str(err).split(". ")[0]  # torch adds a paragraph of advice after its first sentence
        raise CheckpointError(f"cannot read the checkpoint {path} ({cause}): the file is damaged, e.g. cut short "
                              "by a copy. Delete it and train the run again (it starts over from step 0).") from None


def load_model(run_dir, device="cpu"):
    """(model in eval mode, Config) of a run directory's newest checkpoint."""
    ckpt = read_checkpoint(run_dir, device)
    config = Config(**ckpt["config"])
    model = build_model(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config
