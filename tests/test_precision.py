"""The precision switch: bf16 autocast where the device multiplies bf16 natively, fp32 elsewhere; run keys."""
import json

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch.profiler import ProfilerActivity, profile

from conftest import REPO
from mixedae_core.config import Config, make_config
from mixedae_core.lab.cli import main
from mixedae_core.lab.runs import run_dir_for, run_key
from mixedae_core.train import CODE_VERSION, autocast, train


def cpu_with_native_bf16(monkeypatch, native: bool):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_trains_in_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, native, expected):
    cpu_with_native_bf16(monkeypatch, native)
    config = make_config("cpu", precision="auto")
    assert config.precision == expected  # resolved when made: config.json says what the run computed in
    assert Config(**config.to_dict()).precision == expected


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("preset", ["cpu", "long"])
def test_the_cpu_presets_name_the_same_runs_on_every_cpu(monkeypatch, native, preset):
    """Their committed records are fp32: a CPU with native bf16 must find them, not train the suite again in bf16."""
    cpu_with_native_bf16(monkeypatch, native)
    assert make_config(preset).precision == "fp32"


def test_precision_is_part_of_the_run_key_and_fp32_keeps_the_keys_of_older_runs():
    fp32 = make_config("smoke")
    assert fp32.precision == "fp32"
    assert run_key(make_config("smoke", precision="bf16"), CODE_VERSION) != run_key(fp32, CODE_VERSION)
    legacy = {k: v for k, v in fp32.to_dict().items() if k != "precision"}  # a config.json written before the switch
    assert run_key(Config(**legacy), CODE_VERSION) == run_key(fp32, CODE_VERSION)


def test_every_committed_record_is_found_under_its_run_key():
    """Records written before the precision switch existed (no 'precision' in config.json) and after it."""
    records = sorted((REPO / "results" / "runs").glob("*/*/config.json"))
    assert records, "no committed records"
    for path in records:
        config = Config.from_dict(json.loads(path.read_text()))
        assert run_dir_for(config, path.parent.parent).name == path.parent.name, path


def test_unknown_precision_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        make_config("smoke", precision="fp16")
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--preset", "smoke", "--precision", "fp16", "--out", str(tmp_path / "run")])
    assert info.value.code == 2 and "precision" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def attention_ops(precision: str) -> set[str]:
    attn = Attention(32, num_heads=2, qkv_bias=True)
    x = torch.randn(4, 17, 32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with autocast(torch.device("cpu"), precision):
            y = attn(x)
        y.float().sum().backward()
    return {e.key for e in prof.key_averages()}


def test_bf16_on_a_cpu_runs_attention_on_the_math_backend():
    """The fused CPU kernel's bf16 backward made the whole bf16 step slower than fp32's; fp32 keeps it."""
    assert any("flash_attention" in op for op in attention_ops("fp32"))  # the control: the kernel is used at all
    bf16_ops = attention_ops("bf16")
    assert not any("flash_attention" in op for op in bf16_ops)
    assert "aten::_scaled_dot_product_attention_math" in bf16_ops


def test_bf16_training_on_a_cpu_is_deterministic_and_differs_from_fp32(tmp_path):
    def run(name, precision):
        config = make_config("smoke", method="mixedae", synthetic_size=64, epochs=1, batch_size=8,
                             precision=precision)
        summary = train(config, tmp_path / name, progress=False)
        return summary, torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]

    (s1, w1), (_, w2), (s32, w32) = run("a", "bf16"), run("b", "bf16"), run("c", "fp32")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert s1["config"]["precision"] == "bf16" and torch.isfinite(torch.tensor(s1["final"]["loss"]))
    assert not all(torch.equal(w1[k], w32[k]) for k in w1)  # autocast was in effect
    assert s1["final"]["loss"] == pytest.approx(s32["final"]["loss"], rel=0.05)


def test_the_cls_design_is_in_the_key_of_the_runs_it_changes_only():
    new, old = make_config("smoke", method="mixedae"), make_config("smoke", method="mixedae", cls_reads_itself=True)
    assert not new.cls_reads_itself and run_key(new, CODE_VERSION) != run_key(old, CODE_VERSION)
    written_before = {k: v for k, v in old.to_dict().items() if k != "cls_reads_itself"}
    assert Config.from_dict(written_before).cls_reads_itself  # what that run computed, not today's default
    assert run_key(Config.from_dict(written_before), CODE_VERSION) == run_key(old, CODE_VERSION)
    for unchanged in (dict(method="mae"), dict(method="mixedae", cls_per_image=False)):  # a ViT's [CLS] either way
        assert run_key(make_config("smoke", **unchanged), CODE_VERSION) == \
            run_key(make_config("smoke", **unchanged, cls_reads_itself=True), CODE_VERSION)
