"""Command line.

    python -m mixedae_core pretrain --preset cpu --method mixedae --epochs 3 ...
    python -m mixedae_core evaluate RUN_DIR [--train_subset 10000 ...]
    python -m mixedae_core record --preset gpu --method mixedae --seed 1   (train, evaluate, record in results/runs/)
    python -m mixedae_core campaign --preset gpu --workers 6 --budget 390  (every run the notebooks need)
    python -m mixedae_core reproduce --preset gpu --workers 6              (campaign, then the notebooks)
    python -m mixedae_core reproduce --preset gpu --dataset cifar10        (the same on another dataset)

Every Config (pretrain, record) or EvalConfig (evaluate) field is an option under its own name; `--help`
shows each with the comment that documents the field and its default. torchrun works as it is:
`torchrun --nproc_per_node 8 -m mixedae_core pretrain --preset imagenet --dataset imagefolder:/data/imagenet`.

Exit codes; every refusal is one paragraph on stderr that names the option or file and the fix, never a traceback:
    0  done
    1  pretrain, record: stopped by SIGTERM or SIGINT after writing a checkpoint (--resume continues it);
       campaign, reproduce: a run failed (its log is in the run cache's logs/); anything else: a bug, with its
       traceback
    2  refused: an option or config value, a device that is not here, an --out that is not a writable folder,
       a run directory that holds another run, another process's run or a config that differs from its
       checkpoint's, a results folder another campaign or reproduce writes, a damaged checkpoint or run file, a missing, unreadable or too small dataset, an unknown
       notebook prefix; also a file that could not be written (a full disk: the previous file is intact). A
       refused start writes nothing.
    3  campaign, reproduce: the budget ran out before every run was recorded (the same command continues)
    4  pretrain, record: the loss or the weights became non-finite (the message says which checkpoint is left)
  130  interrupted (Ctrl-C): what finished is kept, a run in training checkpointed; the same command continues
"""
import argparse
import contextlib
import dataclasses
import math
import os
import sys
import types
import typing
from pathlib import Path

from ..config import PRESETS, Config, EvalConfig, field_docs, make_config
from ..data import DatasetError
from ..runfiles import CheckpointError, FileLock, RunFileError
from ..train import NonFiniteLossError, RunExistsError, available_device, train
from .campaign import run_campaign
from .experiments import NOTEBOOKS
from .provenance import stamp
from .reproduce import CampaignIncomplete, run_notebooks
from .runs import ensure_run, evaluate_run, results_name, runs_root
from .suite import Suite

DEFAULT_PRESET = "cpu"
PURPOSES = {  # each command's one line: `--help` lists them, and each command's own --help opens with it
    "pretrain": "Pre-train MAE, naive mixing or MixedAE into a run directory (default: the run cache).",
    "evaluate": "kNN, linear probe and object awareness of a run's encoder; writes RUN_DIR/eval.json.",
    "record": "Train (or fetch) one run, evaluate it with its preset's recipe and write its record to "
              "OUT/runs/PRESET/ (config, metrics, summary, eval.json, kept weights).",
    "campaign": "Train and record every run the notebooks need, several side by side.",
    "reproduce": "Train and record the runs (campaign), execute the ablation notebooks, write results/.",
}


def parse_value(cls, config_field: dataclasses.Field, text: str):
    """A CLI string as the type of a field of dataclass `cls` (int, float, bool, str, optional, int tuple)."""
    hint = typing.get_type_hints(cls)[config_field.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    # 'none' is a value of some string choices (--seg_embed none): for those only 'null' means None
    nulls = ("null", "") if str in args else ("none", "null", "")
    if optional and text.lower() in nulls:
        return None
    if isinstance(hint, (types.UnionType, typing._UnionGenericAlias)):  # X | None, int | str | None
        kinds = [a for a in args if a is not type(None)]
        if int in kinds and str in kinds:  # a number, or a named value ('global'): the config validates the name
            try:
                return int(text)
            except ValueError:
                return text
        hint = kinds[0]
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{config_field.name} takes true or false, got {text!r}")
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(int(t) for t in text.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"--{config_field.name} takes integers separated by commas, got {text!r}") from None
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f"--{config_field.name} takes a value of type {hint.__name__}, got {text!r}") from None


class Parser(argparse.ArgumentParser):
    """Errors as one paragraph and exit code 2, never a traceback; no abbreviated options."""

    def __init__(self, *args, **kw):
        super().__init__(*args, allow_abbrev=False, **kw)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message.rstrip('.')}. See {self.prog} --help for every option.\n")
        raise SystemExit(2)


def add_fields(parser, cls, defaults):
    """One option per field of `cls`, its help the field's documenting comment, its default `defaults`'."""
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        group.add_argument(f"--{f.name}", default=None, metavar="VALUE",
                           help=f"{docs[f.name]} (default: {getattr(defaults, f.name)})".replace("%", "%%"))


def field_overrides(parser, args, cls) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        return {name: parse_value(cls, fields[name], text) for name, text in vars(args).items()
                if name in fields and text is not None}
    except ValueError as err:
        parser.error(str(err))


def fail(err, code: int = 2):
    sys.stderr.write(f"error: {err}\n")
    raise SystemExit(code)


def preset_option(parser, fields: bool):
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help=f"named configuration (default: {DEFAULT_PRESET})" +
                             (f"; the options below override it, and their defaults are the {DEFAULT_PRESET} "
                              "preset's" if fields else ""))


def check_device(parser, name: str):
    try:
        available_device(name)
    except ValueError as err:
        parser.error(str(err))


def check_folder(parser, path, option: str):
    """An --out that is, or can become, a writable folder; refused before anything is written."""
    target = Path(path).resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        parser.error(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: {existing} is not writable (read-only or without permission)")


def pretrain(argv):
    parser = Parser(prog="python -m mixedae_core pretrain", description=PURPOSES["pretrain"],
                    usage="%(prog)s [--preset P] [--out DIR [--resume]] [--no-progress] [--FIELD VALUE ...]")
    preset_option(parser, fields=True)
    parser.add_argument("--out", default=None, help="run directory (default: the run cache, keyed by the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_fields(parser, Config, make_config(DEFAULT_PRESET))
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume continues the run in --out DIR: name it (without --out the run cache resumes its "
                     "own unfinished runs by itself, so --resume is not needed there)")
    try:
        config = make_config(args.preset, **field_overrides(parser, args, Config))
    except ValueError as err:
        parser.error(str(err))
    check_device(parser, config.device)
    check_folder(parser, args.out or runs_root(), "--out")
    try:
        if args.out:
            train(config, args.out, resume=args.resume, progress=progress_bars(args), stamp=stamp)
        else:
            print(ensure_run(config, progress=progress_bars(args)))
    except (RunExistsError, DatasetError, CheckpointError, RunFileError) as err:
        fail(err)
    except NonFiniteLossError as err:
        fail(err, code=4)


def evaluate(argv):
    parser = Parser(prog="python -m mixedae_core evaluate",
                    usage="%(prog)s RUN_DIR [--device D] [--no-progress] [--FIELD VALUE ...]",
                    description=PURPOSES["evaluate"])
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the run's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_fields(parser, EvalConfig, EvalConfig())
    args = parser.parse_args(argv)
    try:
        ec = EvalConfig(**field_overrides(parser, args, EvalConfig))
    except ValueError as err:
        parser.error(str(err))
    try:
        result = evaluate_run(args.run_dir, ec, args.device, progress=progress_bars(args))
    except (FileNotFoundError, DatasetError, CheckpointError, RunFileError, ValueError) as err:
        fail(err)
    for name, scores in result["scores"].items():
        print(f"{name:12s} " + "  ".join(f"{k} {score_text(v)}" for k, v in scores.items() if not k.endswith("_images")))
    print(f"written to {args.run_dir}/eval.json")


def score_text(value) -> str:
    """A score as the evaluate command prints it: a number, a per-block list, or '-' where not measured."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + " ".join(f"{v:.3f}" for v in value) + "]"
    return f"{value:.4f}"


def record(argv):
    parser = Parser(prog="python -m mixedae_core record",
                    usage="%(prog)s [--preset P] [--out DIR] [--no-progress] [--FIELD VALUE ...]",
                    description=PURPOSES["record"])
    preset_option(parser, fields=True)
    parser.add_argument("--out", default="results", help="results folder (default: results)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_fields(parser, Config, make_config(DEFAULT_PRESET))
    args = parser.parse_args(argv)
    overrides = field_overrides(parser, args, Config)
    try:
        config = make_config(args.preset, **overrides)
    except ValueError as err:
        parser.error(str(err))
    check_device(parser, config.device)
    check_folder(parser, args.out, "--out")
    suite = Suite(args.preset, [overrides.get("seed", 0)], overrides.pop("device", "auto"), args.out,
                  notebook="record", dataset=overrides.pop("dataset", None), progress=progress_bars(args))
    try:
        print(suite.record(**overrides))
    except (DatasetError, CheckpointError, RunFileError) as err:
        fail(err)
    except NonFiniteLossError as err:
        fail(err, code=4)


def progress_bars(args) -> bool:
    """Bars on a terminal only: in a log, tqdm's carriage returns pile up into one unreadable line."""
    return not args.no_progress and sys.stderr.isatty()


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 256, got {text!r}")
    return int(text)


def suite_options(parser):
    preset_option(parser, fields=False)
    parser.add_argument("--out", default="results", help="results folder (default: results)")
    parser.add_argument("--device", default="auto", help="auto (the preset's device), cpu or cuda (default: auto)")
    parser.add_argument("--dataset", default=None, help="fashion-mnist, cifar10, cifar100, stl10, synthetic or "
                        "imagefolder:PATH, its records, tables, figures and notebooks apart from the preset's "
                        "(default: the preset's)")
    parser.add_argument("--workers", type=worker_count, default=1, help="runs trained side by side, processes (default: 1)")
    parser.add_argument("--budget", type=positive_seconds, default=None,
                        help="seconds; stop starting runs, then stop them (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (none either where output is "
                                                                    "not a terminal)")


def check_suite_options(parser, args):
    """What campaign and reproduce refuse before anything is written."""
    try:
        make_config(args.preset, **({} if args.device == "auto" else {"device": args.device}),
                    **({} if args.dataset is None else {"dataset": args.dataset}))
    except ValueError as err:
        parser.error(str(err))
    if args.device != "auto":  # auto: the preset's device, which a machine reading that preset's records may lack
        check_device(parser, args.device)
    check_folder(parser, args.out, "--out")


@contextlib.contextmanager
def one_writer(args):
    """One campaign or reproduce at a time per results folder and preset: two would train the same runs and
    write the same records. The lock lies in --out, so another clone or folder is not held up; a start refused
    inside (a dataset that cannot be read) leaves no folder it made."""
    out = Path(args.out).resolve()
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(out / f".{results_name(args.preset, args.dataset)}.lock",
                      "{path.parent} is being written by another campaign or reproduce of this preset (pid {pid}): "
                      "wait for it to finish, or stop it (kill {pid}); the same command then continues its runs"):
            yield
    finally:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: it holds what the command wrote
                folder.rmdir()


def campaign(argv):
    parser = Parser(prog="python -m mixedae_core campaign", description=PURPOSES["campaign"])
    suite_options(parser)
    args = parser.parse_args(argv)
    check_suite_options(parser, args)
    try:
        with one_writer(args):
            result = run_campaign(args.preset, None, args.out, device=args.device, workers=args.workers,
                                  budget_s=args.budget, progress=progress_bars(args), dataset=args.dataset)
    except (ValueError, DatasetError, RunFileError) as err:
        fail(err)
    if result["failed"]:
        raise SystemExit(1)
    if not result["complete"]:
        raise SystemExit(3)


def reproduce(argv):
    parser = Parser(prog="python -m mixedae_core reproduce", description=PURPOSES["reproduce"])
    suite_options(parser)
    parser.add_argument("--only", default="", help=f"comma-separated notebook prefixes of {', '.join(NOTEBOOKS)} "
                                                   "(skips the campaign: the notebooks train what they need)")
    args = parser.parse_args(argv)
    check_suite_options(parser, args)
    try:
        with one_writer(args):
            timings = run_notebooks(args.preset, args.out, args.device, [o for o in args.only.split(",") if o],
                                    workers=args.workers, budget_s=args.budget, progress=progress_bars(args),
                                    dataset=args.dataset)
    except (ValueError, DatasetError, RunFileError) as err:
        fail(err)
    except CampaignIncomplete as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(1 if err.failed else 3)
    name, out = results_name(args.preset, args.dataset), Path(args.out)
    print(f"reproduce {name}: done, {len(timings)} notebook(s) in {sum(timings.values()) / 60:.1f} min, no run "
          f"failed. Results: {out / 'README.md'}; notebooks, tables and figures in {out}/{{notebooks,tables,figures}}/"
          f"{name}/")


COMMANDS = {"pretrain": pretrain, "evaluate": evaluate, "record": record, "campaign": campaign, "reproduce": reproduce}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m mixedae_core {{{','.join(COMMANDS)}}} ...  (--help after a command for its options)"
    if argv[:1] in (["--help"], ["-h"]):
        print(f"{usage}\n\n" + "\n".join(f"  {name:10s} {PURPOSES[name]}" for name in COMMANDS))
        return
    if not argv or argv[0] not in COMMANDS:
        sys.stderr.write(f"{usage}\n")
        raise SystemExit(2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished runs are kept and a run in training has checkpointed; the same "
                         "command continues\n")
        raise SystemExit(130)
