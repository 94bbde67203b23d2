"""Where a number came from: code version, machine, time."""
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..train import describe_device

REPO = Path(__file__).resolve().parents[2]
# the documents whose generated blocks a render rewrites from results/ (docblocks.write_docs)
DOCS = ("README.md", "docs/METHOD.md")


def git_commit() -> str:
    """HEAD's short hash, with '+dirty' when tracked files other than results/ and DOCS differ from it. Outside a
    checkout (an exported copy of a commit): $MIXEDAE_COMMIT if set, else 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        # results/ and DOCS' generated blocks are what the code writes: a render rewriting them leaves the code clean
        written = [":!results", *(":!" + doc for doc in DOCS)]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *written],
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
