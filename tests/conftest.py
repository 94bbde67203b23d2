from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "mae_tiny_golden.pt"


@pytest.fixture(scope="session")
def golden():
    """Inputs, weights and outputs of the official facebookresearch/mae code (tests/fixtures/README.md)."""
    assert GOLDEN.exists(), f"MAE golden fixture missing: expected {GOLDEN}"
    return torch.load(GOLDEN, weights_only=True)
