"""Reliability at the edges: every refusal is one paragraph with its exit code and writes nothing; files
survive a full disk and a torn line; one writer per run directory."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import papermill.iorw
import pytest
import torch
from PIL import Image

from conftest import REPO
from mixedae_core.config import make_config
from mixedae_core.lab.campaign import campaign_plan, run_campaign
from mixedae_core.lab.cli import main
from mixedae_core.lab.reproduce import write_readme
from mixedae_core.lab.runs import computed_once, run_dir_for
from mixedae_core.lab.suite import Suite
from mixedae_core.runfiles import FileLock, RunFileError, run_lock, read_metrics, save_atomic
from mixedae_core.train import train

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def refused(argv, capsys, code=2) -> str:
    """stderr of a CLI call that must stop with `code`: one paragraph, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == code, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("edges") / "run"
    train(make_config("smoke", method="mae", epochs=1, synthetic_size=32), run, progress=False)
    return run


# ------------------------------------------------------------------------------ the CLI walked with bad values
SUITE_COMMANDS = ("campaign", "reproduce")
BAD = [  # (command, arguments, what the one sentence names)
    *[(c, ["--epochs", "1000000000000"], "epochs must be <= 10,000") for c in ("pretrain", "record")],
    *[(c, ["--seed", "99999999999999999999999"], "seed must be <= 4,294,967,295") for c in ("pretrain", "record")],
    *[(c, ["--seed", "-1"], "seed must be >= 0") for c in ("pretrain", "record")],
    *[(c, ["--img_size", "100000"], "img_size must be <= 4,096") for c in ("pretrain", "record")],
    *[(c, ["--img_size", "4096", "--patch_size", "4"], "at most 4096") for c in ("pretrain", "record")],
    *[(c, ["--synthetic_size", "10000000000"], "synthetic_size must be <= 1,000,000") for c in ("pretrain", "record")],
    *[(c, ["--precision", "fp16"], "precision must be one of") for c in ("pretrain", "record")],
    *[(c, ["--dataset", "imagefolder:"], "imagefolder needs a path") for c in ("pretrain", "record", *SUITE_COMMANDS)],
    *[(c, ["--dataset", "mnist"], "dataset must be one of") for c in SUITE_COMMANDS],
    *[(c, ["--dataset", "imagefolder:/nonexistent/pets"], "image folder /nonexistent/pets does not exist")
      for c in ("record", *SUITE_COMMANDS)],
    *[(c, ["--budget", b], "must be a positive number of seconds") for c in SUITE_COMMANDS for b in ("-5", "0", "nan")],
    *[(c, ["--workers", "0"], "must be an integer from 1 to 256") for c in SUITE_COMMANDS],
    *[(c, ["--device", "foo"], "device must be auto, cpu, cuda or cuda:N") for c in ("pretrain", "record", *SUITE_COMMANDS)],
]


@pytest.mark.parametrize("command, args, needle", BAD)
def test_every_command_refuses_bad_values_in_one_paragraph_and_writes_nothing(command, args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    err = refused([command, "--preset", "smoke", "--out", str(out), *args], capsys)
    assert needle in err
    assert not out.exists()


@NO_CUDA
@pytest.mark.parametrize("command", ["pretrain", "record", *SUITE_COMMANDS])
def test_a_missing_cuda_device_is_refused_before_anything_is_written(command, tmp_path, capsys):
    err = refused([command, "--preset", "smoke", "--out", str(tmp_path / "out"), "--device", "cuda"], capsys)
    assert "no CUDA device is visible" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["pretrain", "record", *SUITE_COMMANDS])
def test_an_out_that_is_a_file_is_refused(command, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = refused([command, "--preset", "smoke", "--out", str(tmp_path / "file" / "sub")], capsys)
    assert "is a file, not a folder" in err


@pytest.mark.parametrize("command", ["campaign", "reproduce"])
def test_help_of_the_suite_commands_promises_no_field_options(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "defaults are the" not in text and "--preset" in text


# ------------------------------------------------------------------------------ image folders
def image_folder(root, n=8, empty=0):
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i < empty:
            path.write_bytes(b"")
        else:
            Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(path)
    return root


@pytest.mark.parametrize("layout, needle", [("empty file", "empty file(s)"), ("a file", "is a file, not a folder")])
def test_image_folder_refusals_write_nothing(layout, needle, tmp_path, capsys):
    if layout == "empty file":
        folder = image_folder(tmp_path / "images", empty=1)
    else:
        folder = tmp_path / "images.png"
        folder.write_text("x")
    run = tmp_path / "run"
    err = refused(["pretrain", "--preset", "smoke", "--out", str(run), "--dataset", f"imagefolder:{folder}",
                   "--batch_size", "4", "--workers", "0"], capsys)
    assert needle in err and not run.exists()


# ------------------------------------------------------------------------------ run files
def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        err = refused(["pretrain", "--preset", "smoke", "--out", str(run)], capsys)
    assert f"pid {os.getpid()}" in err
    assert not (run / "config.json").exists() and not (run / "metrics.jsonl").exists()


def test_two_writers_started_together_leave_one_run(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mixedae_core", "pretrain", "--preset", "smoke", "--epochs", "4", "--no-progress",
           "--out", str(run)]
    procs = [subprocess.Popen(cmd + extra, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--blr", "0.003"])]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(code for *_, code in results) == [0, 2], results
    loser = next(err for _, err, code in results if code == 2)
    assert "being written by another process" in loser or "holds a run" in loser
    winner_blr = json.loads((run / "config.json").read_text())["blr"]
    assert json.loads((run / "summary.json").read_text())["config"]["blr"] == winner_blr
    steps = [m["step"] for m in read_metrics(run) if m["kind"] == "step"]
    assert steps == sorted(set(steps))  # one writer's lines


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1}, target)

    def full_disk(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunFileError, match="the disk is full.*previous checkpoint.pt is intact"):
        save_atomic({"step": 2}, target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.load(target)["step"] == 1


def test_a_metrics_line_cut_short_is_dropped_on_resume(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        (run / name).write_bytes((finished_run / name).read_bytes())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')
    summary = train(make_config("smoke", method="mae", epochs=1, synthetic_size=32), run, progress=False)
    assert summary["final"] is not None
    assert "cut short" in capsys.readouterr().err
    assert all("st" != m.get("kind") for m in read_metrics(run))


def test_a_damaged_metrics_line_before_the_last_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "st\n{"kind": "step", "step": 1}\n')
    with pytest.raises(RunFileError, match="metrics.jsonl line 1 is damaged"):
        read_metrics(tmp_path)


# ------------------------------------------------------------------------------ evaluate
@NO_CUDA
def test_evaluate_on_a_missing_cuda_device_gives_no_false_advice(finished_run, capsys):
    err = refused(["evaluate", str(finished_run), "--device", "cuda"], capsys)
    assert "no CUDA device is visible" in err and "damaged" not in err


@pytest.mark.parametrize("args, needle", [(["--attention_layer", "99"], "attention_layer 99 is not a block"),
                                          (["--device", "foo"], "device must be auto, cpu, cuda or cuda:N")])
def test_evaluate_checks_its_options_against_the_run(args, needle, finished_run, capsys):
    assert needle in refused(["evaluate", str(finished_run), *args], capsys)
    assert not (finished_run / "eval.json").exists()


@pytest.mark.parametrize("damage", ["config.json deleted", "config.json corrupt", "eval.json corrupt"])
def test_evaluate_reads_the_config_from_the_checkpoint_and_recomputes_a_damaged_eval(damage, finished_run, tmp_path,
                                                                                  capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"):
        (run / name).write_bytes((finished_run / name).read_bytes())
    if damage == "config.json deleted":
        (run / "config.json").unlink()
    else:
        (run / damage.split()[0]).write_text("{not json")
    main(["evaluate", str(run), "--no-progress", "--train_subset", "32", "--test_subset", "16", "--baselines", "false",
          "--pretext_images", "8"])
    assert json.loads((run / "eval.json").read_text())["scores"]["encoder"]
    if damage == "eval.json corrupt":
        assert "eval.json is not valid JSON" in capsys.readouterr().err


# ------------------------------------------------------------------------------ campaigns and results
def test_a_refused_suite_command_leaves_no_folders(tmp_path, capsys):
    refused(["campaign", "--preset", "smoke", "--out", str(tmp_path / "out"), "--budget", "0"], capsys)
    refused(["record", "--preset", "smoke", "--out", str(tmp_path / "out"), "--seed", "-3"], capsys)
    assert not (tmp_path / "out").exists()


def test_the_smoke_preset_and_other_datasets_have_no_section_in_the_committed_readme(tmp_path):
    for preset in ("smoke", "cpu", "cpu-cifar10"):
        (tmp_path / "tables" / preset).mkdir(parents=True)
        (tmp_path / "tables" / preset / "claims_01.csv").write_text(
            "# notebook: 01\nclaim,measured,seeds,p_value,p_adjusted,reference,verdict\nc,1,3,0.5,0.5,,not significant\n")
        (tmp_path / "figures" / preset).mkdir(parents=True)
        (tmp_path / "figures" / preset / "01_transfer.png").write_bytes(b"")
    write_readme(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "CPU preset" in readme and "| notebook | claim |" in readme and "figures/cpu/01_transfer.png" in readme
    assert "Smoke preset" not in readme and "figures/smoke" not in readme and "cpu-cifar10" not in readme


def test_ctrl_c_stops_a_campaign_without_a_traceback_and_logs_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mixedae_core", "campaign", "--preset", "smoke", "--out",
                             str(tmp_path / "out"), "--no-progress"], cwd=REPO,
                            env={**ENV, "MIXEDAE_RUNS": str(tmp_path / "runs")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal: a shell's background job (`cmd &`) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    log = json.loads((tmp_path / "out" / "tables" / "smoke" / "campaign_log.json").read_text())
    assert log[-1]["interrupted"] is True


def test_a_worker_killed_from_outside_fails_its_run_and_the_other_worker_finishes_the_campaign(tmp_path):
    """As the out-of-memory killer would: SIGKILL, no handler runs. With one task queue shared by the workers,
    the other worker took the killed one's run and nothing was reported."""
    plan, result = [{"method": "mae", "seed": seed} for seed in (0, 1, 2)], {}
    before = multiprocessing.active_children()

    def campaign():
        try:
            result.update(run_campaign("smoke", [0, 1, 2], tmp_path / "out", str(tmp_path / "runs"), workers=2,
                                       plan=plan, progress=False))
        except BaseException as error:  # kept for the test's thread, which asserts there is none
            result["error"] = error

    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    deadline, workers = time.time() + 60, []
    while not workers and time.time() < deadline:  # the first worker, as soon as it exists: it holds a run
        workers = [p for p in multiprocessing.active_children() if p not in before]
        time.sleep(0.05)
    try:
        assert workers, "the campaign started no worker"
        os.kill(workers[0].pid, signal.SIGKILL)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the campaign waits forever for its killed worker"
    finally:  # a hung campaign must not hang pytest too
        for p in multiprocessing.active_children():
            if p not in before:
                p.kill()
    assert "error" not in result, result.get("error")
    assert len(result["failed"]) == 1 and len(result["trained"]) == 2 and not result["complete"], result
    assert result["left"] == [{k: v for k, v in result["failed"][0].items() if k not in ("run", "seconds")}]


# ------------------------------------------------------------------------------ one writer, and a tidy exit
def test_the_command_list_is_help_not_an_error(capsys):
    main(["--help"])  # returns: exit code 0
    out = capsys.readouterr().out
    assert all(f"  {command} " in out for command in ("pretrain", "evaluate", "record", "campaign", "reproduce"))


def test_resume_without_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIXEDAE_RUNS", str(tmp_path / "runs"))
    err = refused(["pretrain", "--preset", "smoke", "--epochs", "1", "--synthetic_size", "32", "--resume"], capsys)
    assert "--resume continues the run in --out DIR" in err and not (tmp_path / "runs").exists()


def test_locks_go_with_their_process_and_a_stale_one_is_taken_over(finished_run, tmp_path):
    assert not (finished_run / ".lock").exists()  # the run's writer has finished
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("999999999")  # left by a killed process: no flock holds it
    with run_lock(run):
        assert (run / ".lock").read_text() == str(os.getpid())
    assert not (run / ".lock").exists()
    assert computed_once(tmp_path / "cache" / "x.json", lambda: {"x": 1}) == {"x": 1}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["x.json"]


def test_a_result_being_computed_elsewhere_is_left_to_its_computer_without_wait(tmp_path):
    path = tmp_path / "cache" / "row.json"
    path.parent.mkdir()
    with FileLock(path.with_suffix(".lock")):  # as another process computing it holds it (flock is per open file)
        assert computed_once(path, lambda: pytest.fail("computed by two"), wait=False) is None
    assert computed_once(path, lambda: {"row": 1}, wait=False) == {"row": 1}
    assert computed_once(path, lambda: pytest.fail("computed twice")) == {"row": 1}


def smoke_reproduce(out, runs, *extra):
    return subprocess.Popen([sys.executable, "-m", "mixedae_core", "reproduce", "--preset", "smoke", "--out", str(out),
                             "--no-progress", *extra], cwd=REPO, env={**ENV, "MIXEDAE_RUNS": str(runs)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_second_reproduce_on_one_results_folder_is_refused_with_the_first_ones_pid(tmp_path):
    first = smoke_reproduce(tmp_path / "out", tmp_path / "runs")
    try:
        lock, deadline = tmp_path / "out" / ".smoke.lock", time.time() + 120
        while not (lock.exists() and lock.stat().st_size) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert lock.exists(), "the first reproduce holds no lock on its results folder"
        second = smoke_reproduce(tmp_path / "out", tmp_path / "runs-2")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and f"(pid {first.pid})" in err and "Traceback" not in err, err
        assert not (tmp_path / "runs-2").exists()  # refused before it trained anything
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()


def test_reproduce_exits_1_when_a_run_failed(tmp_path):
    suite = Suite("smoke", progress=False)
    first = run_dir_for(suite.config(**campaign_plan(suite)[0]), tmp_path / "runs")
    first.mkdir(parents=True)
    (first / "checkpoint.pt").write_bytes(b"cut short")  # a damaged checkpoint: its resume raises
    # the budget lets the first run start and no other (they start while 30 s are left)
    proc = smoke_reproduce(tmp_path / "out", tmp_path / "runs", "--workers", "1", "--budget", "36")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 run(s) failed" in err, err


def test_a_full_disk_while_writing_a_notebook_is_one_paragraph_and_leaves_no_notebook(tmp_path, monkeypatch, capsys):
    def full_disk(self, buf, path):
        open(path, "w").write(buf[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(papermill.iorw.LocalHandler, "write", full_disk)
    err = refused(["reproduce", "--preset", "smoke", "--only", "00", "--out", str(tmp_path / "out"), "--no-progress"],
                  capsys)
    assert "notebook 00_tour stopped" in err and "No space left on device" in err
    assert list((tmp_path / "out" / "notebooks" / "smoke").iterdir()) == []  # neither the notebook nor a part of it


def test_evaluate_names_a_run_directory_that_does_not_exist(tmp_path, capsys):
    err = refused(["evaluate", str(tmp_path / "no-such-run")], capsys)
    assert err == f"error: {tmp_path / 'no-such-run'} does not exist\n"
