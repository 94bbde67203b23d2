"""The runs a preset's notebooks need, trained side by side before the notebooks execute.

    python -m mixedae_core campaign --preset gpu --workers 6 --budget 390

Each pending run is trained in its own process, `workers` at a time on one device: a small model leaves a
big GPU idle between kernel launches, and several processes fill those gaps. A finished run is evaluated
and recorded in results/runs/<preset>/ (see suite.py), so a committed record is never trained again.
When the budget runs out the running processes get SIGTERM: they checkpoint and stop, and the next
campaign on that machine resumes them; runs not yet started wait for the next campaign.
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import make_config
from .suite import Suite
from .train import DeviceBatches, runs_root

METHODS = ("mae", "naive", "mixedae")


def k_values(config) -> list[int]:
    """Notebook 03's K values: rN/2 + 1, the default rN + 1, 2rN + 1 and global attention N + 1."""
    N, rN = config.num_patches, config.num_patches // config.group_size
    return [rN // 2 + 1, rN + 1, 2 * rN + 1, N + 1]


def planned_steps(config) -> int:
    """Optimizer steps of a run of `config` (loads its training set's size, not the run)."""
    import torch
    steps = config.epochs * DeviceBatches(config, torch.device("cpu"), 0, 1).steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


def planned_runs(preset: str, seeds) -> list[dict]:
    """The overrides of every run the notebooks train with their default parameters, headline first:
    01 (every method and seed; 00, 02 and 05 reuse them), 02 (same-class groups), 03 (K), 04 (full mixing)."""
    first = list(seeds)[:1]
    mixedae = make_config(preset, method="mixedae")
    if mixedae.dataset_kind == "imagefolder":
        raise ValueError(f"preset {preset} trains on an image folder: the notebooks (and so the campaign) need a "
                         "device-resident dataset with a test split (fashion-mnist, cifar10/100, stl10)")
    plan = [dict(method=m, seed=s) for m in METHODS for s in seeds]
    plan += [dict(method=m, seed=s, group_by="class") for m in ("naive", "mixedae") for s in first]
    plan += [dict(method="mixedae", seed=s, topk=k) for k in k_values(mixedae) if k != mixedae.resolved_topk
             for s in first]
    equal_compute = max(1, planned_steps(mixedae) // mixedae.group_size)
    plan += [dict(method="mixedae", seed=s, mix_mode="full") for s in first]
    plan += [dict(method="mixedae", seed=s, mix_mode="full", max_steps=equal_compute) for s in first]
    return plan


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def drawn_runs(seeds) -> list[dict]:
    """The runs whose models notebooks 00 and 05 draw: their checkpoints must exist, not only their records."""
    return [dict(method=m, seed=list(seeds)[0]) for m in METHODS]


def _worker(preset, seeds, out_dir, runs_root_dir, device, tasks, results, start_by):
    """One process of the campaign: records runs from `tasks` until none is left or `start_by` (a shared
    time) has passed. Each run's output goes to runs/logs/<run>.log. SIGTERM stops a run in training at a
    checkpoint (train() handles it there), lets an evaluation finish, and stops anything else at once."""
    import contextlib
    import signal
    import traceback
    evaluating = []

    def on_sigterm(*_):
        start_by.value = float("-inf")
        if not evaluating:
            raise SystemExit("stopped by SIGTERM before training")

    signal.signal(signal.SIGTERM, on_sigterm)
    suite = Suite(preset, seeds, device, out_dir, notebook="campaign", runs_root=runs_root_dir, progress=False)
    logs = Path(runs_root_dir or runs_root()) / "logs"
    while True:
        overrides = tasks.get()
        if overrides is None or time.time() > start_by.value:
            return
        name, started = suite.record_path(**overrides).name, time.time()
        status = "evaluated" if suite.has_run(**overrides) else "trained"
        with open(logs / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                suite.run(**overrides)  # a drawn run with a record may still lack its checkpoint
                evaluating.append(1)
                suite.record(**overrides)
            except SystemExit as exit_:  # SIGTERM during training: train() wrote a checkpoint
                print(exit_, flush=True)
                status = "stopped"
            except Exception:
                traceback.print_exc()
                status = "failed"
            evaluating.clear()
        results.put((overrides, name, status, round(time.time() - started, 1)))
        if status == "stopped" or start_by.value == float("-inf"):
            return


def run_campaign(preset: str, seeds, out_dir="results", runs_root_dir=None, device: str = "auto",
                 workers: int = 1, budget_s: float | None = None, min_start_s: float = 30.0,
                 progress: bool = True, plan: list[dict] | None = None, grace_s: float = 120.0) -> dict:
    """Train and record every pending run of `plan` (default: `planned_runs`), `workers` processes at a
    time. With `budget_s`, a run starts only while it can be expected to finish (the longest run so far,
    or `min_start_s` before any finished); at the deadline the workers get SIGTERM: runs in training
    checkpoint and stop, evaluations get `grace_s` seconds to finish. Returns (and appends to
    tables/<preset>/campaign_log.json) what was trained, evaluated, stopped, failed and left."""
    import multiprocessing as mp
    import queue as queue_module
    import signal
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t_start = time.time()
    suite = Suite(preset, seeds, device, out_dir, notebook="campaign", runs_root=runs_root_dir, progress=False)
    plan = planned_runs(preset, suite.seeds) if plan is None else plan
    drawn = drawn_runs(suite.seeds)

    def needs_work(o):  # no current record, or a drawn run without its checkpoint
        return not suite.has_record(**o) or (o in drawn and not suite.has_run(**o))

    pending = [o for o in plan if needs_work(o)]
    (Path(runs_root_dir or runs_root()) / "logs").mkdir(parents=True, exist_ok=True)
    print(f"campaign {preset}: {len(plan)} planned runs, {len(plan) - len(pending)} already recorded in "
          f"{suite.records}, {len(pending)} to train, {min(workers, len(pending))} at a time", flush=True)
    deadline = None if budget_s is None else t_start + budget_s
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked processes
    tasks, results = ctx.Queue(), ctx.Queue()
    start_by = ctx.Value("d", float("inf") if deadline is None else deadline - min_start_s)
    for overrides in pending:
        tasks.put(overrides)
    outcome = {"trained": [], "evaluated": [], "failed": [], "stopped": []}
    procs, terminated = [], set()

    def terminate(signum=None, frame=None):
        start_by.value = float("-inf")  # no worker starts another run
        for p in procs:
            if p.is_alive() and p.pid not in terminated:
                p.terminate()  # SIGTERM, once: train() checkpoints, an evaluation finishes first
                terminated.add(p.pid)
        if signum is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
            raise SystemExit(f"campaign stopped by signal {signum}")

    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, terminate) if main_thread else None  # `kill` stops the workers too
    bar = tqdm(total=len(pending), unit="run", desc=f"campaign {preset}", disable=not progress)
    try:
        if pending:
            threads = str(max(1, (os.cpu_count() or 1) // workers))  # no oversubscription of the CPU
            old_threads = os.environ.get("OMP_NUM_THREADS")
            os.environ.setdefault("OMP_NUM_THREADS", threads)
            for _ in range(min(workers, len(pending))):
                tasks.put(None)
                procs.append(ctx.Process(target=_worker, args=(preset, suite.seeds, str(suite.out), runs_root_dir,
                                                               device, tasks, results, start_by)))
                procs[-1].start()
            if old_threads is None:
                del os.environ["OMP_NUM_THREADS"]
        while True:
            alive = [p for p in procs if p.is_alive()]
            if deadline is not None and time.time() > deadline:
                terminate()
                if time.time() > deadline + grace_s:
                    for p in alive:
                        p.kill()
            try:  # after the last worker exits, what it sent is still read
                overrides, name, status, seconds = results.get(timeout=0.5 if alive else 2)
            except queue_module.Empty:
                if alive:
                    continue
                break
            outcome[status].append({**overrides, "run": name, "seconds": seconds})
            bar.update(1)
            if status == "trained" and deadline is not None:  # do not start what cannot finish
                longest = max(e["seconds"] for e in outcome["trained"])
                start_by.value = min(start_by.value, deadline - longest)
            if status == "failed":
                log = Path(runs_root_dir or runs_root()) / "logs" / f"{name}.log"
                print(f"run {overrides} failed; the end of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)
    finally:  # also on Ctrl-C and SIGTERM: one grace period for all workers, then kill
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        terminate()
        end = time.time() + grace_s
        for p in procs:
            p.join(max(0.0, end - time.time()))
            if p.is_alive():
                p.kill()
                p.join()
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    bar.close()
    left = [o for o in pending if needs_work(o)]
    result = {"preset": preset, "planned": len(plan), "recorded_before": len(plan) - len(pending), **outcome,
              "left": left, "complete": not left and all(suite.has_record(**o) for o in plan), "workers": workers,
              "budget_s": budget_s, "wall_seconds": round(time.time() - t_start, 1),
              "provenance": suite.provenance()}
    path = suite.out / "tables" / preset / "campaign_log.json"  # one entry per campaign that ran, newest last
    if pending:
        history = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(history + [result], indent=1, default=str))
    print(f"campaign {preset}: {len(outcome['trained'])} trained, {len(outcome['evaluated'])} evaluated only, "
          f"{len(outcome['failed'])} failed, {len(outcome['stopped'])} stopped at the budget, {len(left)} left for "
          f"the next campaign, in {result['wall_seconds']:.0f} s; log {path}", flush=True)
    return result
