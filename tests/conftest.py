from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "fixtures" / "mae_tiny_golden.pt"


@pytest.fixture(scope="session")
def golden():
    """Inputs, weights and outputs of the official facebookresearch/mae code (shared/fixtures)."""
    assert GOLDEN.exists(), f"MAE golden fixture missing: expected {GOLDEN} (the shared/ folder beside the repo)"
    return torch.load(GOLDEN, weights_only=True)
