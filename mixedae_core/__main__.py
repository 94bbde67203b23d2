"""Command line: `python -m mixedae_core pretrain --preset cpu --method mixedae --epochs 3 ...`

Every Config field is an option under its own name. torchrun works as it is:
`torchrun --nproc_per_node 8 -m mixedae_core pretrain --preset imagenet --dataset imagefolder:/data/in1k/train`.
"""
import argparse
import dataclasses
import sys

from .config import PRESETS, Config, make_config, parse_value


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one paragraph and exit 2, never a traceback
        fields = ", ".join(f.name for f in dataclasses.fields(Config))
        sys.stderr.write(f"{self.prog}: error: {message}. Options: --preset {{{','.join(PRESETS)}}}, --out DIR, "
                         f"--resume, --no-progress, and --<field> VALUE for any config field ({fields}).\n")
        raise SystemExit(2)


def parse_pretrain(argv):
    parser = Parser(prog="python -m mixedae_core pretrain", description="Pre-train MAE, naive mixing or MixedAE.")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--out", default=None, help="run directory (default: the run cache, keyed by the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(Config):
        parser.add_argument(f"--{f.name}", default=None, metavar="VALUE")
    args = parser.parse_args(argv)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    try:
        overrides = {name: parse_value(fields[name], text) for name, text in vars(args).items()
                     if name in fields and text is not None}
        config = make_config(args.preset, **overrides)
    except ValueError as err:
        parser.error(str(err).rstrip("."))
    return args, config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("pretrain",):
        sys.stderr.write("usage: python -m mixedae_core pretrain [--preset P] [--out DIR] [--resume] [--<field> VALUE ...]\n")
        raise SystemExit(2)
    args, config = parse_pretrain(argv[1:])
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


if __name__ == "__main__":
    main()
