"""The runs a preset's notebooks need (experiments.py), trained side by side before the notebooks execute.

    python -m mixedae_core campaign --preset gpu --workers 6 --budget 390 [--dataset cifar10]

Each pending run is trained in its own process, `workers` at a time on one device: a small model leaves a
big GPU idle between kernel launches, and several processes fill those gaps. A finished run is evaluated
and recorded in results/runs/<preset>/ (results/runs/<preset>-<dataset>/ on another dataset than the
preset's, runs.py), so a committed record is never trained again.
When the budget runs out the running processes get SIGTERM: they checkpoint and stop, and the next
campaign on that machine resumes them; runs not yet started wait for the next campaign. A worker killed from
outside (the out-of-memory killer) fails the run it held; the other workers go on.
"""
import contextlib
import json
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from ..runfiles import CHECKPOINT, write_text_atomic
from .experiments import drawn_runs, planned_runs
from .runs import records_control, run_dir_for, runs_root
from .suite import Suite


def campaign_plan(suite: Suite) -> list[dict]:
    """Every run the preset's notebooks read, each once, headline first."""
    return planned_runs(suite.config(method="mixedae"), suite.seeds, lambda run: suite.record_path(**run).name)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def run_log(runs_root_dir, name: str) -> Path:
    """Where a campaign's worker writes the output of run `name`."""
    return Path(runs_root_dir or runs_root()) / "logs" / f"{name}.log"


def _worker(preset, seeds, out_dir, runs_root_dir, device, dataset, index, tasks, results):
    """Worker `index` of the campaign: records the runs the campaign hands it through its own `tasks` queue until
    it gets None, and reports each on the shared `results` queue.
    Each run's output goes to `run_log`. SIGTERM stops a run in training at a checkpoint (train()
    handles it there), lets an evaluation finish, and stops anything else at once."""
    evaluating, stopping = [], []

    def on_sigterm(*_):
        stopping.append(1)
        if not evaluating:
            raise SystemExit("stopped by SIGTERM before training")

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the campaign, which stops the workers (SIGTERM)
    suite = Suite(preset, seeds, device, out_dir, notebook="campaign", runs_root=runs_root_dir, dataset=dataset,
                  progress=False)
    while (overrides := tasks.get()) is not None:
        name, started = suite.record_path(**overrides).name, time.time()
        run_dir = run_dir_for(suite.config(**overrides), runs_root_dir)
        status = "evaluated" if suite.has_model(**overrides) else "resumed" if (run_dir / CHECKPOINT).exists() \
            else "trained"
        log_path = run_log(runs_root_dir, name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                if not suite.has_model(**overrides):  # trained first: SIGTERM then checkpoints it
                    suite.run(**overrides)
                evaluating.append(1)
                suite.record(**overrides)
            except SystemExit as exit_:  # SIGTERM during training: train() wrote a checkpoint
                print(exit_, flush=True)
                status = "stopped"
            except Exception:
                traceback.print_exc()
                status = "failed"
        results.put((index, overrides, name, status, round(time.time() - started, 1)))
        evaluating.clear()  # only now: a SIGTERM before the outcome is sent would lose a recorded run
        if status == "stopped" or stopping:
            return


class _Workers:
    """The campaign's worker processes, the runs they may still start, and stopping them. The campaign hands a
    worker its next run only after reading that worker's last result, so a start limit that result moves
    applies to the very next start. Each worker reads its own task queue, so the campaign knows which run each
    one holds, and a worker killed while it waits for a run holds no lock another worker waits on. Stopping: one
    SIGTERM each (a run in training checkpoints, an evaluation finishes first), then a kill after the grace
    period."""

    def __init__(self, suite: Suite, runs_root_dir, device, pending: list[dict], workers: int, start_by: float):
        ctx = mp.get_context("spawn")  # CUDA cannot be used in forked processes
        n = min(workers, len(pending))
        self.tasks, self.results = [ctx.Queue() for _ in range(n)], ctx.Queue()
        self.start_by, self.waiting, self.suite, self.runs_root_dir = start_by, list(pending), suite, runs_root_dir
        self.procs, self.terminated, self.holding = [], set(), [None] * n  # holding: each worker's unreported run
        threads = str(max(1, (os.cpu_count() or 1) // workers))  # no oversubscription of the CPU
        old_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        for i in range(n):
            self.procs.append(ctx.Process(target=_worker, args=(
                suite.preset, suite.seeds, str(suite.out), runs_root_dir, device, suite.dataset, i, self.tasks[i],
                self.results)))
            self.procs[-1].start()
            self.hand_out(i)
        if old_threads is None:
            del os.environ["OMP_NUM_THREADS"]

    def hand_out(self, i: int):
        """Idle worker `i` gets the next waiting run if it may still start, else None (it exits)."""
        start = self.waiting and time.time() <= self.start_by
        self.holding[i] = self.waiting.pop(0) if start else None
        self.tasks[i].put(self.holding[i])

    def died_holding(self) -> list[int]:
        """The workers that have exited without reporting the run they hold, not stopped by the campaign: killed
        from outside (the out-of-memory killer, a `kill -9`)."""
        return [i for i, (p, run) in enumerate(zip(self.procs, self.holding))
                if run is not None and not p.is_alive() and p.pid not in self.terminated]

    def alive(self):
        return [p for p in self.procs if p.is_alive()]

    def terminate(self, signum=None, frame=None):
        self.start_by = float("-inf")  # no worker starts another run
        for p in self.alive():
            if p.pid not in self.terminated:
                p.terminate()
                self.terminated.add(p.pid)
        if signum is not None:  # the campaign's own SIGTERM: a second one must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise SystemExit(f"campaign stopped by signal {signum}")

    def join(self, grace_s: float):
        self.terminate()
        for tasks in self.tasks:  # a run finished at its last step despite SIGTERM: its worker waits for a task
            tasks.put(None)  # (not in terminate(): a signal handler must not take the queue's lock)
        end = time.time() + grace_s
        for p in self.procs:
            p.join(max(0.0, end - time.time()))
            if p.is_alive():
                p.kill()
                p.join()


def latest_start(deadline: float | None, finished: list[dict], one_off) -> float | None:
    """The last moment a run can start and be expected to finish by `deadline`: the deadline minus the longest
    finished run (its "seconds"), leaving out runs that also computed something one-off (`one_off(run)`: the
    positive control, several pre-trainings long); None without a deadline or such a run."""
    typical = [e["seconds"] for e in finished if not one_off(e)]
    return deadline - max(typical) if deadline is not None and typical else None


def _collect(workers: _Workers, outcome: dict, deadline, grace_s: float, bar, one_off):
    """Read the workers' results until the last one has exited; at the deadline, stop them. `one_off(run)`: the
    run also computes something no other run does (the positive control)."""
    while True:
        alive, died = workers.alive(), workers.died_holding()  # before reading: all a dead worker sent is then read
        if deadline is not None and time.time() > deadline:
            workers.terminate()
            if time.time() > deadline + grace_s:
                for p in alive:
                    p.kill()
        try:  # after the last worker exits, what it sent is still read
            index, overrides, name, status, seconds = workers.results.get(timeout=0.5 if alive else 2)
        except queue_module.Empty:
            for i in died:
                _lost(workers, i, outcome, bar)
            if alive:
                continue
            return
        workers.holding[index] = None
        _record(outcome, bar, status, overrides, name, seconds)
        # an evaluation from kept weights is sized like a training run (~10 min here): it counts too
        latest = latest_start(deadline, outcome["trained"] + outcome["resumed"] + outcome["evaluated"], one_off)
        if status in ("trained", "resumed", "evaluated") and latest is not None:  # do not start what cannot finish
            workers.start_by = min(workers.start_by, latest)
        if status != "stopped":  # the worker that sent it waits for its next run
            workers.hand_out(index)
        if status == "failed":
            _print_failure(overrides, "it raised", run_log(workers.runs_root_dir, name))


def _lost(workers: _Workers, i: int, outcome: dict, bar):
    """Worker i died holding a run: a failure (the campaign exits with 1); the next campaign trains or resumes it."""
    run, workers.holding[i] = workers.holding[i], None
    name = workers.suite.record_path(**run).name
    _record(outcome, bar, "failed", run, name, None)
    # the log is this worker's only if it got as far as opening it
    _print_failure(run, f"its worker process died (exit code {workers.procs[i].exitcode})",
                   run_log(workers.runs_root_dir, name))


def _record(outcome: dict, bar, status: str, run: dict, name: str, seconds: float | None):
    """The run's outcome, and a line for it: in a log (no bar) it is the campaign's only sign of progress."""
    outcome[status].append({**run, "run": name, "seconds": seconds})
    done = sum(len(runs) for runs in outcome.values())
    bar.write(f"run {done}/{bar.total} {name}: {status}" + ("" if seconds is None else f" in {seconds:.0f} s"))
    bar.update(1)


def _print_failure(run: dict, why: str, log: Path):
    print(f"run {run} failed ({why}); the end of {log}:\n{_tail(log)}", file=sys.stderr, flush=True)


def run_campaign(preset: str, seeds=None, out_dir="results", runs_root_dir=None, device: str = "auto",
                 workers: int = 1, budget_s: float | None = None, min_start_s: float = 30.0,
                 progress: bool = True, plan: list[dict] | None = None, grace_s: float = 120.0,
                 dataset: str | None = None) -> dict:
    """Train and record every pending run of `plan` (default: `campaign_plan`) on `dataset` (None: the
    preset's), `workers` processes at a time. With `budget_s`, a run starts only while it can be expected to
    finish (the longest run so far, or `min_start_s` before any finished); at the deadline the workers get
    SIGTERM: runs in training checkpoint and stop, evaluations get `grace_s` seconds to finish. Returns (and
    appends to tables/<suite name>/campaign_log.json) what was trained, evaluated, stopped, failed and left."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t_start = time.time()
    suite = Suite(preset, seeds, device, out_dir, notebook="campaign", runs_root=runs_root_dir, dataset=dataset,
                  progress=False)
    plan = campaign_plan(suite) if plan is None else plan
    drawn = drawn_runs(None, suite.seeds)

    def needs_work(o):  # no current record, or a drawn run whose model is not at hand
        return not suite.has_record(**o) or (o in drawn and not suite.has_model(**o))

    pending = [o for o in plan if needs_work(o)]
    print(f"campaign {suite.name}: {len(plan)} planned runs, {len(plan) - len(pending)} already recorded in "
          f"{suite.records}, {len(pending)} to train, {min(workers, len(pending))} at a time", flush=True)
    deadline = None if budget_s is None else t_start + budget_s
    outcome = {"trained": [], "resumed": [], "evaluated": [], "failed": [], "stopped": []}
    pool = _Workers(suite, runs_root_dir, device, pending, workers,
                    float("inf") if deadline is None else deadline - min_start_s)
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, pool.terminate) if main_thread else None  # `kill` stops the workers too
    bar = tqdm(total=len(pending), unit="run", desc=f"campaign {suite.name}", disable=not progress)
    interrupted = True
    try:
        _collect(pool, outcome, deadline, grace_s, bar,
                 lambda o: records_control(suite.config(**{k: v for k, v in o.items() if k not in ("run", "seconds")}),
                                           suite.eval_config))
        interrupted = False
    finally:  # also on Ctrl-C and SIGTERM: one grace period for all workers, then kill; the log is written
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pool.join(grace_s)
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
        bar.close()
        result = _log_campaign(suite, plan, pending, outcome, needs_work, workers, budget_s, t_start, interrupted)
    return result


def _log_campaign(suite: Suite, plan, pending, outcome, needs_work, workers, budget_s, t_start,
                  interrupted: bool) -> dict:
    """The campaign's result, appended to tables/<suite name>/campaign_log.json when it had work (an interrupted
    campaign too: its runs and time count), and its closing line."""
    left = [o for o in pending if needs_work(o)]
    result = {"preset": suite.preset, "planned": len(plan), "recorded_before": len(plan) - len(pending), **outcome,
              "left": left, "complete": not left and all(suite.has_record(**o) for o in plan), "workers": workers,
              "budget_s": budget_s, "interrupted": interrupted, "wall_seconds": round(time.time() - t_start, 1),
              "provenance": suite.provenance()}
    path = suite.out / "tables" / suite.name / "campaign_log.json"  # one entry per campaign that ran, newest last
    if pending:
        history = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(history + [result], indent=1, default=str))
    print(f"campaign {suite.name}{' (interrupted)' if interrupted else ''}: {len(outcome['trained'])} trained, "
          f"{len(outcome['resumed'])} resumed, {len(outcome['evaluated'])} evaluated only, "
          f"{len(outcome['failed'])} failed, {len(outcome['stopped'])} stopped at the budget, {len(left)} left for "
          f"the next campaign, in {result['wall_seconds']:.0f} s; log {path}", flush=True)
    return result
