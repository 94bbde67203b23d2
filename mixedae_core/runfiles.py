"""The files of a run directory: what `train()` writes and what evaluation, notebooks and tools read.

    config.json     the Config of the run
    metrics.jsonl   one JSON object per logged step ("kind": "step"), per epoch ("kind": "epoch") and, for a run
                    trained with a probe, per learning-curve point ("kind": "curve")
    checkpoint.pt   model, optimizer, loop state, RNG and the config it was trained with (written atomically at
                    every epoch's end and every `checkpoint_minutes` inside an epoch); a resume trusts its
                    config, not config.json
    summary.json    written last, once the run has finished: steps, images, wall time, final epoch means
    model.safetensors  a record's kept weights (the model's, fp32, no optimizer): what evaluation and the notebooks
                    load where no checkpoint is at hand (lab/runs.py keeps one beside every record)

Writes go beside the file and are renamed over it, so a reader never sees half a file; a write that fails
(a full disk) removes its temporary file and leaves the previous file as it was. One process writes a run
directory at a time: the writer holds an exclusive lock on its `.lock` file (with its pid inside), removed
when it ends.
"""
import errno
import fcntl
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config
from .model import build_model

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"
WEIGHTS = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


class RunFileError(RuntimeError):
    """A run file that cannot be read or written, or a run directory another process writes; the message
    names the file and what to do."""


def write_atomic(path: Path, write):
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write the same file
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if not isinstance(err, (OSError, RuntimeError)):  # KeyboardInterrupt and the like go on as they are
            raise
        free = shutil.disk_usage(path.parent).free / 2 ** 20 if path.parent.exists() else float("nan")
        full = getattr(err, "errno", None) == errno.ENOSPC or free < 64
        raise RunFileError(f"cannot write {path} ({str(err).splitlines()[0]}; {free:.0f} MiB free there)"
                           + (": the disk is full. Free space" if full else ". Check the folder's permissions")
                           + (f" and resume: the previous {path.name} is intact." if path.exists() else ".")) from None


def write_text_atomic(path: Path, text: str):
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_atomic(obj, path: Path):
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_weights(state_dict: dict, path: Path):
    """The model's weights as safetensors (fp32 as trained; contiguous, as the format wants), written atomically."""
    write_atomic(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp))


def read_json(path: Path) -> dict:
    """A run file's JSON; a damaged file is a RunFileError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise RunFileError(f"{path} is not valid JSON ({err}): the file is damaged; delete it (a run's "
                           "config is also in its checkpoint, and eval.json is recomputed)") from None


def read_metrics(run_dir) -> list[dict]:
    """metrics.jsonl's lines. A last line cut short (the writer was killed while writing it) is dropped, and
    said once; a damaged line before the last is a RunFileError."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise RunFileError(f"{path} line {i + 1} is damaged ({line[:60]!r}); the run's numbers after it "
                                   "cannot be trusted: train the run again in a new directory") from None
            print(f"note: {path} ends in a line cut short ({line[:60]!r}); it is dropped", file=sys.stderr)
    return records


class FileLock:
    """An exclusive lock held by one process: `with FileLock(path, refusal):`. A second taker is refused at once
    with a RunFileError, `refusal` formatted with the holder's pid (or, with `wait`, waits its turn). The pid is
    written inside; the file is removed on exit, and one left by a killed process holds no lock (flock goes with
    the process), so it is simply taken over."""

    def __init__(self, path, refusal: str = "{path} is held by another process (pid {pid})", wait: bool = False):
        self.path, self.refusal, self.wait = Path(path), refusal, wait

    def __enter__(self):
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                self.file.seek(0)
                holder = self.file.read().strip() or "unknown"
                self.file.close()
                raise RunFileError(self.refusal.format(path=self.path, pid=holder)) from None
            if self._still_ours():  # else the holder we waited for removed the file: lock the new one
                break
            self.file.close()
        try:
            self.file.truncate(0)
            self.file.write(str(os.getpid()))
            self.file.flush()
        except OSError as err:
            self.__exit__()
            raise RunFileError(f"cannot write the lock {self.path} ({err}): free space or check the folder's "
                               "permissions") from None
        return self

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc):
        if self._still_ours():  # removed while still locked, so no one takes a file that is going away
            self.path.unlink(missing_ok=True)
        self.file.close()  # releases the lock


def run_lock(run_dir) -> FileLock:
    """The run directory's writer lock: `with run_lock(run_dir):` while writing it."""
    return FileLock(Path(run_dir) / ".lock", "{path.parent} is being written by another process (pid {pid}): wait "
                                             "for it to finish, or stop it (kill {pid}) and resume the run")


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


def has_model(run_dir) -> bool:
    """A finished run whose model can be loaded: from its checkpoint, or from the kept weights of a record."""
    run_dir = Path(run_dir)
    return (run_dir / SUMMARY).exists() and ((run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists())


def load_model(run_dir, device="cpu"):
    """(model in eval mode, Config) of a run directory's newest checkpoint, or else of its kept weights (a record:
    the config is config.json's)."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists() and (run_dir / WEIGHTS).exists():
        config = Config.from_dict(read_json(run_dir / CONFIG))
        model = build_model(config).to(device)
        model.load_state_dict(load_file(run_dir / WEIGHTS, device=str(device)))
        return model.eval(), config
    ckpt = read_checkpoint(run_dir, device)
    config = Config.from_dict(ckpt["config"])
    model = build_model(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config
