"""The training engine: CLI, validation, resumable checkpoints, torchrun equivalence, the run cache."""
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO
from mixedae_core.lab.cli import main
from mixedae_core.config import Config, EvalConfig, make_config
from mixedae_core.lab.runs import ensure_run, run_dir_for, run_key
from mixedae_core.runfiles import load_model, read_metrics
from mixedae_core.train import CODE_VERSION, NonFiniteLossError, RunExistsError, lr_schedule, param_groups, train
from mixedae_core.model import build_model
from mixedae_core.switches import resolve

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mixedae_core", "pretrain", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, **kw)


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def functional(state_dict):
    """Weights with the key part of every qkv bias zeroed. That bias adds the same logit to every key of a
    query, so softmax ignores it: its true gradient is 0 and Adam turns float noise there into full-size
    steps. Two runs that differ only in summation order (accumulation, processes) differ there alone."""
    out = {}
    for name, w in state_dict.items():
        if name.endswith("attn.qkv.bias"):
            w = w.clone()
            third = w.shape[0] // 3
            w[third:2 * third] = 0
        out[name] = w
    return out


def assert_same_run(a, b, atol):
    wa, wb = functional(weights(a)), functional(weights(b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)
    ma = [m for m in read_metrics(a) if m["kind"] == "epoch"]
    mb = [m for m in read_metrics(b) if m["kind"] == "epoch"]
    assert len(ma) == len(mb) > 0
    for x, y in zip(ma, mb):
        for key in ("loss", "loss_rec", "loss_hc"):
            assert x[key] == pytest.approx(y[key], abs=atol), key


def assert_identical_runs(a, b):
    """Bit for bit: same weights (key biases included), same logged losses."""
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("img_per_s", "seconds")} for m in ms]
    assert strip(read_metrics(a)) == strip(read_metrics(b))


# ------------------------------------------------------------------------------------ CLI and validation
def test_cli_smoke_run_leaves_checkpoint_metrics_config(tmp_path):
    result = cli("--preset", "smoke", "--method", "mixedae", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert {"checkpoint.pt", "metrics.jsonl", "config.json", "summary.json"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "mixedae" and config["dataset"] == "synthetic"
    steps = [m for m in read_metrics(run) if m["kind"] == "step"]
    assert steps and all(0 <= m["topk_acc"] <= 1 and m["img_per_s"] > 0 for m in steps)
    assert all(len(m["topk_acc_layers"]) == config["depth"] for m in steps)
    assert json.loads((run / "summary.json").read_text())["steps"] == 16  # 128 images / 16, 2 epochs


@pytest.mark.parametrize("args,needle", [
    (["--nonsense", "3"], "unrecognized arguments: --nonsense"),
    (["--epochs", "three"], "--epochs takes a value of type int"),
    (["--norm_pix_loss", "maybe"], "--norm_pix_loss takes true or false"),
    (["--mix_ratio", "0.3"], "mix_ratio must be 1/G"),
    (["--method", "mae", "--topk", "5"], "topk is a MixedAE switch"),
    (["--method", "mae", "--hc_weight", "0.5"], "hc_weight is a MixedAE switch"),
    (["--topk", "every"], "topk must be a number of keys or 'global'"),
    (["--batch_size", "18", "--method", "naive"], "batch_size 18 must be divisible"),
    (["--preset", "laptop"], "invalid choice: 'laptop'"),
    (["--dataset", "fashion-mnist", "--in_chans", "3"], "set in_chans=1"),  # a dataset's own fields yield to options
    (["--dataset", "cifar10"], "cifar10 not found"),  # not on disk, and no --download
    (["--dataset", "imagefolder:/nonexistent/train"], "image folder /nonexistent/train does not exist"),
    (["--train_subset", "-5"], "train_subset must be >= 1, got -5"),
    (["--train_subset", "0"], "train_subset must be >= 1, got 0"),
    (["--hc_weight", "-1"], "hc_weight must be >= 0"),
    (["--mlp_ratio", "0"], "mlp_ratio must be > 0"),
    (["--blr", "nan"], "blr must be a finite number, got nan"),
    (["--warmup_epochs", "inf"], "warmup_epochs must be a finite number, got inf"),
    (["--batch_size", "256"], "128 training images give no full batch of 256: lower --batch_size"),
])
def test_cli_rejects_bad_input_with_exit_2_and_no_traceback(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIXEDAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("args,needle", [
    (["--train_subset", "-5"], "train_subset must be >= 1, got -5"),
    (["--test_subset", "0"], "test_subset must be >= 1, got 0"),
    (["--batch_size", "0"], "batch_size must be >= 1, got 0"),
    (["--knn_temperature", "nan"], "knn_temperature must be a finite number"),
])
def test_evaluate_rejects_bad_numbers_with_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path), *args])
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("make", [
    lambda: make_config("smoke", blr=float("nan")),
    lambda: make_config("smoke", min_lr=float("nan")),
    lambda: make_config("smoke", hc_weight=float("nan")),
    lambda: make_config("smoke", hc_temperature=float("inf")),
    lambda: make_config("smoke", checkpoint_minutes=-1.0),
    lambda: make_config("smoke", num_heads=0),
    lambda: EvalConfig(probe_l2=float("nan")),
    lambda: EvalConfig(attention_mass=0.0),
])
def test_the_python_api_refuses_what_the_cli_refuses(make):
    with pytest.raises(ValueError, match="must be"):
        make()


def test_resume_trusts_the_checkpoint_not_config_json(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--preset", "smoke", "--epochs", "1", "--out", str(run), "--no-progress", "--resume"]
    main(args)
    assert f"no checkpoint in {run}: starting from step 0" in capsys.readouterr().out
    (run / "config.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--blr", "0.005", "--epochs", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "blr: checkpoint 0.001, requested 0.005" in err
    assert "epochs: checkpoint 1, requested 2" in err and "cannot be extended" in err
    assert not (run / "config.json").exists()  # refused before anything is written
    main([*args, "--workers", "3", "--log_every", "1", "--checkpoint_minutes", "1"])  # they do not change the run
    assert f"resuming run {run} after its last step (8)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["workers"] == 3


def test_damaged_checkpoint_is_named_on_resume_and_on_evaluate(tmp_path, capsys):
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    train(make_config("smoke", method="mae", epochs=1), run, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])
    config_json = (run / "config.json").read_text()
    for command in (["evaluate", str(run)], ["pretrain", "--preset", "smoke", "--method", "mae", "--epochs", "1",
                                             "--out", str(run), "--resume", "--no-progress"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"error: cannot read the checkpoint {ckpt} (")
        assert "Delete it" in err and err.count("\n") == 1, command
    assert (run / "config.json").read_text() == config_json


def test_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--preset", "smoke", "--blr", "1e6", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 4 and err.count("\n") == 1
    step = int(re.search(r"the loss became (?:nan|inf) at step (\d+) ", err).group(1))
    assert f"at step {step} (epoch {step // 8}) of run {tmp_path}; no checkpoint was written" in err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    main(["pretrain", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_make_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown config field"):
        make_config("smoke", epoch=3)
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")


# ------------------------------------------------------------------------------------ schedule, optimiser
def test_lr_schedule_warmup_then_cosine():
    peak = 0.01
    lrs = lr_schedule(peak, 1e-5, total_steps=100, warmup_steps=20)
    assert lrs[0] == 0 and lrs[10] == pytest.approx(peak / 2) and lrs[20] == pytest.approx(peak)
    assert lrs[60] == pytest.approx((peak + 1e-5) / 2)  # half way through the cosine: the mean of its ends
    assert lrs[99] > 1e-5 and lrs[99] == pytest.approx(1e-5, abs=peak * 1e-3)
    assert (lrs[20:][1:] <= lrs[20:][:-1]).all()
    assert make_config("smoke", blr=2.56e-3, batch_size=16).lr == pytest.approx(2.56e-3 * 16 / 256)


def test_no_weight_decay_on_norms_biases_embeddings_tokens():
    model = build_model(make_config("smoke", method="mixedae"))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "mask_token", "seg_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= no_decay_names
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 or p.ndim == 4 for p in decay["params"])
    assert "pos_embed" not in no_decay_names | {names[id(p)] for p in decay["params"]}  # frozen sin-cos
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_run_key_depends_on_what_the_run_computes():
    a = make_config("smoke")
    assert run_key(a, CODE_VERSION) == run_key(make_config("smoke", log_every=7), CODE_VERSION)
    assert run_key(a, CODE_VERSION) != run_key(make_config("smoke", seed=1), CODE_VERSION)
    assert run_key(a, CODE_VERSION) != run_key(a, CODE_VERSION + "x")


# ------------------------------------------------------------------------------------ resumability
def small(**kw):
    return make_config("smoke", **{"method": "mixedae", "synthetic_size": 96, "epochs": 4, "batch_size": 8, **kw})


def test_resume_accepts_its_own_config(tmp_path):
    """config.json round-trips (tuples come back as lists): a finished or interrupted run resumes."""
    config = small(epochs=1, homologous_layers=(1,))
    train(config, tmp_path, progress=False)
    assert train(config, tmp_path, progress=False)["steps"] == 12
    with pytest.raises(RunExistsError, match="another config"):
        train(small(epochs=1, homologous_layers=(0,)), tmp_path, progress=False)


def test_resume_refuses_a_switch_at_its_legacy_value_that_the_checkpoint_did_not_have(tmp_path):
    """A field at the value runs computed with before it existed is left out of the run key; resuming must still
    see that it differs from the checkpoint's (here: a [CLS] that reads itself, on a checkpoint whose did not)."""
    train(small(epochs=1), tmp_path, progress=False)
    for switched in (dict(cls_reads_itself=True), dict(precision="bf16")):
        with pytest.raises(RunExistsError, match=next(iter(switched))):
            train(small(epochs=1, **switched), tmp_path, progress=False)


def test_same_seed_same_numbers(tmp_path):
    train(small(epochs=2), tmp_path / "a", progress=False)
    train(small(epochs=2), tmp_path / "b", progress=False)
    assert_same_run(tmp_path / "a", tmp_path / "b", atol=0)


def spawn(config: Config, out, resume=False, threads=1):
    args = [f"--{k}={v}" for k, v in config.to_dict().items() if v is not None]
    return subprocess.Popen([sys.executable, "-m", "mixedae_core", "pretrain", "--preset", "smoke", "--out", str(out),
                             "--no-progress", *(["--resume"] if resume else []), *args],
                            cwd=REPO, env={**ENV, "OMP_NUM_THREADS": str(threads)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(out, kind, n, proc, timeout=120):
    """Until `n` metric lines of `kind` are logged and a checkpoint is on disk (it is written after the line)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len([m for m in read_metrics(out) if m["kind"] == kind]) >= n and (out / "checkpoint.pt").exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise TimeoutError


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_weights(tmp_path, sig):
    config = small(epochs=6, synthetic_size=160)
    proc = spawn(config, tmp_path / "killed")
    wait_for_lines(tmp_path / "killed", "epoch", 1, proc)
    time.sleep(0.15)  # into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and not (tmp_path / "killed" / "summary.json").exists(), "run ended before the kill"
    if sig == signal.SIGTERM:
        assert "stopped by signal" in err
    resumed = spawn(config, tmp_path / "killed", resume=True)
    straight = spawn(config, tmp_path / "straight")  # same process setup, so the same float arithmetic
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and "resuming" in out, err
    assert straight.wait(timeout=120) == 0, straight.communicate()
    assert_identical_runs(tmp_path / "killed", tmp_path / "straight")
    epochs = [m["epoch"] for m in read_metrics(tmp_path / "killed") if m["kind"] == "epoch"]
    assert epochs == list(range(6))  # no duplicated or missing epoch line after the resume


@pytest.mark.parametrize("size, threads", [("smoke", 1), ("cpu", 2)])
def test_run_killed_inside_an_epoch_resumes_there_to_the_same_weights(tmp_path, size, threads):
    # A checkpoint after every step, a metric line every 2. "cpu": the cpu preset's model and batch on generated
    # images, 8 steps an epoch, on 2 threads, where a kernel whose parallel reduction order varied would show.
    if size == "smoke":
        config, per_epoch, lines = small(epochs=3, synthetic_size=160, checkpoint_minutes=0.0), 20, 13
    else:
        config, per_epoch, lines = make_config("cpu", dataset="synthetic", synthetic_size=8 * 128, epochs=2,
                                               checkpoint_minutes=0.0, log_every=2), 8, 6
    total = config.epochs * per_epoch
    killed = tmp_path / "killed"
    proc = spawn(config, killed, threads=threads)
    wait_for_lines(killed, "step", lines, proc)  # into the second epoch
    proc.kill()
    proc.wait()
    step = torch.load(killed / "checkpoint.pt", weights_only=False)["state"]["step"]
    assert step % per_epoch and not (killed / "summary.json").exists()
    resumed = spawn(config, killed, resume=True, threads=threads)
    straight = spawn(dataclasses.replace(config, checkpoint_minutes=5.0), tmp_path / "straight", threads=threads)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming run {killed} at step {step} of {total} (epoch {step // per_epoch})" in out
    assert straight.wait(timeout=300) == 0, straight.communicate()
    assert_identical_runs(killed, tmp_path / "straight")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # One step per epoch (a checkpoint after every step); step 0 has lr 0 (warm-up), then a learning
    # rate so large that the weights blow up within a few steps.
    config = make_config("smoke", method="naive", synthetic_size=8, batch_size=8, epochs=200, warmup_epochs=1,
                         blr=1e6, norm_pix_loss=False)
    with pytest.raises(NonFiniteLossError, match=r"(weights became non-finite|loss became \w+) at step \d+") as info:
        train(config, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    failed, saved = int(str(info.value).split("at step ")[1].split()[0]), ckpt["state"]["step"]
    assert saved == failed >= 1  # the checkpoint after the step before
    assert f"at step {failed} (epoch {failed}) of run" in str(info.value)  # one step per epoch
    assert (f"its last good checkpoint {tmp_path / 'checkpoint.pt'}, taken after step {saved - 1} "
            f"(epoch {saved - 1}), is untouched") in str(info.value)


# ------------------------------------------------------------------------------------ torchrun
def test_two_gloo_processes_train_the_same_model_as_one(tmp_path):
    config = small(epochs=2, accum_steps=1)
    args = [f"--{k}={v}" for k, v in config.to_dict().items() if v is not None]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "mixedae_core", "pretrain", "--preset", "smoke", "--out", str(tmp_path / "two"),
                             "--no-progress", *args], cwd=REPO, env={**ENV, "MIXEDAE_BACKEND": "gloo"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    train(config, tmp_path / "one", progress=False)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert_same_run(tmp_path / "two", tmp_path / "one", atol=1e-5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    train(small(epochs=1, accum_steps=2), tmp_path / "accum", progress=False)
    train(small(epochs=1), tmp_path / "plain", progress=False)
    assert_same_run(tmp_path / "accum", tmp_path / "plain", atol=1e-5)


# ------------------------------------------------------------------------------------ run cache
def test_ensure_run_trains_once_then_reuses(tmp_path):
    config = small(epochs=1)
    run = ensure_run(config, root=tmp_path, progress=False)
    assert run == run_dir_for(config, tmp_path) and (run / "summary.json").exists()
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    assert ensure_run(config, root=tmp_path, progress=False) == run
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp  # not trained again
    model, loaded = load_model(run)
    assert loaded == config and not model.training


def test_ensure_run_resumes_an_unfinished_run(tmp_path):
    config = small(epochs=6, synthetic_size=160)
    run = run_dir_for(config, tmp_path)
    proc = spawn(config, run)
    wait_for_lines(run, "epoch", 1, proc)
    proc.kill()
    proc.wait()
    assert not (run / "summary.json").exists()
    straight = spawn(config, tmp_path / "straight")
    resumed = subprocess.run([sys.executable, "-c", "import sys; from mixedae_core.config import Config; "
                              "from mixedae_core.lab.runs import ensure_run; import json; "
                              f"ensure_run(Config(**json.load(open({str(run / 'config.json')!r}))), root={str(tmp_path)!r}, "
                              "progress=False)"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout  # continued from the checkpoint, not retrained
    assert straight.wait(timeout=120) == 0
    assert_identical_runs(run, tmp_path / "straight")


def image_folder(root):
    """Two classes of 8 random images each, ImageNet's train/ layout."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_run(tmp_path):
    """The DataLoader path (ImageNet-style folders) trains and checkpoints like the device-resident one, on the
    images the folder's test split leaves (one of each class's 8)."""
    config = make_config("smoke", method="naive", dataset=f"imagefolder:{image_folder(tmp_path / 'train')}",
                         workers=0, epochs=2, batch_size=4)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 2 * (14 // 4) and math.isfinite(summary["final"]["loss"])


def test_image_folder_smaller_than_a_batch_or_with_a_corrupt_image_is_one_sentence(tmp_path, capsys):
    folder = image_folder(tmp_path / "train")
    args = ["pretrain", "--preset", "smoke", "--method", "naive", "--dataset", f"imagefolder:{folder}", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--batch_size", "32", "--workers", "0", "--out", str(tmp_path / "small")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"image folder {folder} holds 14 training images, fewer than one batch of 32" in err
    assert not (tmp_path / "small").exists()
    (folder / "a" / "3.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--batch_size", "8", "--workers", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: image folder {folder} holds 1 file(s) that are "
                                                        f"not readable images: {folder / 'a' / '3.png'}. ")
    assert err.count("\n") == 1  # the sentence alone, not the worker's traceback
    assert not (tmp_path / "run").exists()  # named before training, not an epoch into it


def test_a_switch_at_its_default_value_names_the_same_run():
    config = make_config("smoke", method="mixedae")
    rN = config.num_patches // resolve(config).group_size
    key = run_key(config, CODE_VERSION)
    assert run_key(make_config("smoke", method="mixedae", topk=rN), CODE_VERSION) == key
    assert run_key(make_config("smoke", method="mixedae", seg_embed="encoder"), CODE_VERSION) == key
    assert run_key(make_config("smoke", method="mixedae", homologous_layers=(0, 1)), CODE_VERSION) == key
    assert run_key(make_config("smoke", method="mixedae", topk=rN + 1), CODE_VERSION) != key
    assert run_key(make_config("smoke", method="mixedae", seg_embed="decoder"), CODE_VERSION) != key
    assert run_key(make_config("smoke", method="mae", seg_embed="none"), CODE_VERSION) == \
        run_key(make_config("smoke", method="mae"), CODE_VERSION)
    N = config.num_patches  # 'global' is the K that keeps every key: one model, one run
    assert run_key(make_config("smoke", method="mixedae", topk="global"), CODE_VERSION) == \
        run_key(make_config("smoke", method="mixedae", topk=N), CODE_VERSION)
    assert run_key(make_config("smoke", method="mixedae", hc_weight=0.0, hc_form="features"), CODE_VERSION) == \
        run_key(make_config("smoke", method="mixedae", hc_weight=0.0), CODE_VERSION)
    assert run_key(make_config("smoke", method="mae", cls_per_image=False), CODE_VERSION) == \
        run_key(make_config("smoke", method="mae"), CODE_VERSION)  # one image per sequence: nothing to share


@pytest.mark.parametrize("command,cls", [("pretrain", Config), ("evaluate", None)])
def test_every_option_has_its_field_comment_and_default_in_help(command, cls, capsys):
    import dataclasses
    from mixedae_core.config import EvalConfig, field_docs
    cls = cls or EvalConfig
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}, "a field without its documenting comment"
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, doc in docs.items():
        assert f"--{name} VALUE {' '.join(doc.split())} (default: " in text, name


def test_every_string_choice_is_reachable_from_the_command_line(tmp_path):
    """'none' is a value of --seg_embed, not the default (null is); the first design is --hc_form features."""
    from mixedae_core.lab.cli import parse_value
    fields = {f.name: f for f in __import__("dataclasses").fields(Config)}
    assert parse_value(Config, fields["seg_embed"], "none") == "none"
    assert parse_value(Config, fields["seg_embed"], "null") is None
    assert parse_value(Config, fields["topk"], "null") is None  # the default K; 'none' would read as no TopK
    assert (parse_value(Config, fields["topk"], "global"), parse_value(Config, fields["topk"], "16")) == ("global", 16)
    main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "run"), "--seg_embed", "none", "--hc_form",
          "features", "--hc_weight", "0.1", "--epochs", "1", "--no-progress"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["seg_embed"], saved["hc_form"], saved["hc_weight"]) == ("none", "features", 0.1)
