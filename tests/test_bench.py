"""The MFU numerator and denominator of `make bench`, against numbers that do not come from our code."""
import sys

import pytest
import torch

from mixedae_core import ModelConfig, build_model
from mixedae_core.lab.provenance import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from bench import VIT_B, count_flops, peak_flops  # noqa: E402


def block_flops(tokens: int, dim: int) -> int:
    """Forward FLOPs of one ViT block on one image: qkv, proj and the 4x MLP (12 d^2 weights, 2 FLOPs per
    multiply-add) plus the two attention matmuls (QK^T and AV, 2 T^2 d each)."""
    return 2 * tokens * 12 * dim ** 2 + 4 * tokens ** 2 * dim


def test_counted_forward_flops_of_mae_vit_b_match_the_transformer_formula():
    model = build_model(ModelConfig(method="mae", **VIT_B)).eval()
    N, d, dd, p = 196, 768, 512, 16
    visible = N // 4 + 1  # 25 % of the patches and [CLS]
    expected = (2 * N * (3 * p * p) * d                         # patch embedding
                + 12 * block_flops(visible, d)                   # encoder on the visible tokens only
                + 2 * visible * d * dd                           # decoder embedding
                + 8 * block_flops(N + 1, dd)                     # decoder on all positions
                + 2 * (N + 1) * dd * (p * p * 3))                # prediction head
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert count_flops(lambda: model(images)) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA L40S", 362e12),
                                        ("NVIDIA L4", 121e12), ("NVIDIA L40", None), ("Tesla T4", None)])
def test_peak_bf16_flops_from_the_data_sheets(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == peak
    assert peak_flops(torch.device("cpu")) is None
