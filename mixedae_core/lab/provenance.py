"""Where a number came from: code version, machine, time."""
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..train import describe_device

REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """HEAD's short hash, with '+dirty' when tracked files outside results/ differ from it. Outside a checkout
    (an exported copy of a commit): $MIXEDAE_COMMIT if set, else 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        # results/ is what the code writes, so a run rewriting it leaves the code itself clean
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("MIXEDAE_COMMIT", "unknown")


def provenance(device: torch.device | str) -> dict:
    return {"commit": git_commit(), "device": describe_device(device), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def stamp(device) -> dict:
    """What `train()` adds to a run's summary.json."""
    return {"provenance": provenance(device)}
