"""Command line.

    python -m mixedae_core pretrain --preset cpu --method mixedae --epochs 3 ...
    python -m mixedae_core evaluate RUN_DIR [--train_subset 10000 ...]
    python -m mixedae_core record --preset gpu --method mixedae --seed 1   (train, evaluate, record in results/runs/)
    python -m mixedae_core campaign --preset gpu --workers 6 --budget 390  (every run the notebooks need)
    python -m mixedae_core reproduce --preset gpu --workers 6              (campaign, then the notebooks)

Every Config (pretrain) or EvalConfig (evaluate) field is an option under its own name. torchrun works as
it is: `torchrun --nproc_per_node 8 -m mixedae_core pretrain --preset imagenet --dataset imagefolder:/data/train`.
"""
import argparse
import dataclasses
import sys

from .config import PRESETS, Config, make_config, parse_value


class Parser(argparse.ArgumentParser):
    """Errors as one paragraph and exit code 2, never a traceback."""

    def __init__(self, *args, fields_of=Config, extra="", **kw):
        super().__init__(*args, **kw)
        self.fields_of, self.extra = fields_of, extra

    def error(self, message):
        options = self.extra
        if self.fields_of is not None:
            fields = ", ".join(f.name for f in dataclasses.fields(self.fields_of))
            options += f"--<field> VALUE for any field of {self.fields_of.__name__} ({fields})"
        sys.stderr.write(f"{self.prog}: error: {message}. Options: {options.rstrip(', ')}.\n")
        raise SystemExit(2)


def add_fields(parser, cls):
    for f in dataclasses.fields(cls):
        parser.add_argument(f"--{f.name}", default=None, metavar="VALUE")


def field_overrides(parser, args, cls) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        return {name: parse_value(cls, fields[name], text) for name, text in vars(args).items()
                if name in fields and text is not None}
    except ValueError as err:
        parser.error(str(err).rstrip("."))


def pretrain(argv):
    parser = Parser(prog="python -m mixedae_core pretrain", description="Pre-train MAE, naive mixing or MixedAE.",
                    extra=f"--preset {{{','.join(PRESETS)}}}, --out DIR, --resume, --no-progress, ")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--out", default=None, help="run directory (default: the run cache, keyed by the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    add_fields(parser, Config)
    args = parser.parse_args(argv)
    try:
        config = make_config(args.preset, **field_overrides(parser, args, Config))
    except ValueError as err:
        parser.error(str(err).rstrip("."))
    from .data import DatasetError
    from .train import RunExistsError, ensure_run, train
    try:
        if args.out:
            train(config, args.out, resume=args.resume, progress=not args.no_progress)
        else:
            print(ensure_run(config, progress=not args.no_progress))
    except (RunExistsError, DatasetError) as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2)


def evaluate(argv):
    from .evaluate import EvalConfig, evaluate_run
    parser = Parser(prog="python -m mixedae_core evaluate", fields_of=EvalConfig, extra="RUN_DIR, --device D, ",
                    description="kNN, linear probe and object awareness of a run's encoder; writes RUN_DIR/eval.json.")
    parser.add_argument("run_dir")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    add_fields(parser, EvalConfig)
    args = parser.parse_args(argv)
    ec = EvalConfig(**field_overrides(parser, args, EvalConfig))
    from .data import DatasetError
    try:
        result = evaluate_run(args.run_dir, ec, args.device, progress=not args.no_progress)
    except (FileNotFoundError, DatasetError, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2)
    for name, scores in result["scores"].items():
        print(f"{name:12s} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if not k.endswith("_images")))
    print(f"written to {args.run_dir}/eval.json")


def record(argv):
    parser = Parser(prog="python -m mixedae_core record", extra="--preset P, --out DIR, --no-progress, ",
                    description="Train (or fetch) one run, evaluate it with its preset's recipe and write its record "
                                "to OUT/runs/PRESET/ (config, metrics, summary, eval.json).")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--out", default="results")
    parser.add_argument("--no-progress", action="store_true")
    add_fields(parser, Config)
    args = parser.parse_args(argv)
    overrides = field_overrides(parser, args, Config)
    try:
        make_config(args.preset, **overrides).validate()
    except ValueError as err:
        parser.error(str(err).rstrip("."))
    from .data import DatasetError
    from .suite import Suite
    suite = Suite(args.preset, [overrides.get("seed", 0)], overrides.pop("device", "auto"), args.out,
                  notebook="record", progress=not args.no_progress)
    try:
        print(suite.record(**overrides))
    except DatasetError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2)


def _suite_options(parser):
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--out", default="results")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1, help="runs trained side by side (processes)")
    parser.add_argument("--budget", type=float, default=None, help="seconds; stop starting runs, then stop them")
    parser.add_argument("--no-progress", action="store_true")


def campaign(argv):
    from .campaign import run_campaign
    from .data import DatasetError
    from .reproduce import SEEDS
    parser = Parser(prog="python -m mixedae_core campaign", fields_of=None,
                    extra="--preset P, --out DIR, --device D, --workers W, --budget SECONDS, --no-progress",
                    description="Train and record every run the notebooks need, several side by side.")
    _suite_options(parser)
    args = parser.parse_args(argv)
    try:
        result = run_campaign(args.preset, SEEDS[args.preset], args.out, device=args.device, workers=args.workers,
                              budget_s=args.budget, progress=not args.no_progress)
    except (ValueError, DatasetError) as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2)
    if result["failed"]:
        raise SystemExit(1)
    if not result["complete"]:
        raise SystemExit(3)


def reproduce(argv):
    from .data import DatasetError
    from .reproduce import NOTEBOOKS, CampaignIncomplete, run_notebooks
    parser = Parser(prog="python -m mixedae_core reproduce", fields_of=None,
                    extra="--preset P, --out DIR, --device D, --workers W, --budget SECONDS, --no-progress, --only 01,02",
                    description="Train and record the runs (campaign), execute the ablation notebooks, write results/.")
    _suite_options(parser)
    parser.add_argument("--only", default="", help=f"comma-separated notebook prefixes of {', '.join(NOTEBOOKS)} "
                                                   "(skips the campaign: the notebooks train what they need)")
    args = parser.parse_args(argv)
    try:
        run_notebooks(args.preset, args.out, args.device, [o for o in args.only.split(",") if o],
                      workers=args.workers, budget_s=args.budget, progress=not args.no_progress)
    except (ValueError, DatasetError) as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2)
    except CampaignIncomplete as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(3)


COMMANDS = {"pretrain": pretrain, "evaluate": evaluate, "record": record, "campaign": campaign, "reproduce": reproduce}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.stderr.write("usage: python -m mixedae_core {pretrain,evaluate,record,campaign,reproduce} ...  (--help after the command for its options)\n")
        raise SystemExit(2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
