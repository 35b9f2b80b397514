"""Command line: `python -m bertclf train|predict|import-hf|encoders`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from bertclf.errors import TrainingError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig fields as --flags (defaults come from TrainConfig)."""
    from bertclf.config import TrainConfig

    helps = {
        "data": "'imdb', an archive, a folder of <class>/*.txt, or a CSV/TSV/Parquet file",
        "encoder": "a name from `python -m bertclf encoders`, or a folder with encoder/ and "
                   "preprocess/",
        "encoder_map": "a TOML file adding to or overriding the encoder map",
        "max_examples": "stratified, seeded sample of at most N examples from each split",
        "lr_schedule": "constant | linear (warmup, then linear decay to 0)",
        "wd_schedule": "constant | piecewise (x1, x0.1, x0.01 at 50%%/75%% of steps) | lr "
                       "(follows the learning rate)",
        "patience": "epochs without a better validation loss before stopping",
        "bucket": "batch by length and pad each batch to its longest (true/false)",
        "jit_compile": "XLA (true/false); default: on with a GPU (auto-clustering under mixed "
                       "precision)",
        "precision": "float32 | mixed_float16 (GPU) | mixed_bfloat16 (CPU, oneDNN); default: "
                     "mixed_float16 with a GPU, float32 without",
    }
    types = {"int": int, "float": float, "str": str, "bool": _bool}
    for f in fields(TrainConfig):
        type_name = str(f.type).split("|")[0].strip()
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, type=types.get(type_name, str),
                            required=f.name == "data", default=argparse.SUPPRESS,
                            help=helps.get(f.name, f"default: {f.default}"))


def _train(args: argparse.Namespace) -> None:
    from bertclf.config import TrainConfig
    from bertclf.encoders import get_encoder
    from bertclf.outdir import check_out_dir

    options = {k: v for k, v in vars(args).items() if k not in ("command", "run", "out", "force")}
    config = TrainConfig.from_dict(options)
    config.validate()
    # Every user error is found here, before training (and before TensorFlow loads).
    check_out_dir(args.out, args.force)
    get_encoder(config.encoder, config.encoder_map)
    dataset = config.load_data()
    for note in dataset.notes:
        print(f"data: {note}")

    from bertclf.artifacts import save_run
    from bertclf.train import train

    result = train(config, dataset=dataset)
    paths = save_run(result, args.out, force=args.force)
    print(f"best epoch {result.best_epoch}: val_accuracy {result.val_accuracy:.4f}, "
          f"test_accuracy {result.test_accuracy:.4f}, test_loss {result.test_loss:.4f}")
    for name, path in paths.items():
        print(f"{name}: {path}")


def _predict(args: argparse.Namespace) -> None:
    if not (Path(args.model_dir) / "saved_model.pb").is_file():
        raise UserError(f"{args.model_dir}: not an exported model (no saved_model.pb); pass "
                        "the saved_model/ folder that `bertclf train` wrote")
    from bertclf.export import predict

    for name, probability in predict(args.model_dir, args.texts):
        print(f"{name}\t{probability:.4f}")


def _encoders(args: argparse.Namespace) -> None:
    from bertclf.encoders import load_map

    for spec in load_map(args.encoder_map).values():
        print(f"{spec.name}\t{spec.encoder}\t{spec.preprocess}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m bertclf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train = commands.add_parser("train", help="fine-tune one classifier")
    add_train_options(train)
    train.add_argument("--out", required=True, help="folder for metrics.json, curves.png, "
                       "saved_model/")
    train.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="score texts with an exported model")
    predict.add_argument("model_dir", help="an exported saved_model/ folder")
    predict.add_argument("texts", nargs="+", help="texts to classify")
    predict.set_defaults(run=_predict)

    from bertclf.hf_import import add_import_command

    add_import_command(commands)

    encoders = commands.add_parser("encoders", help="list the encoder map")
    encoders.add_argument("--encoder-map", help="a TOML file adding to the map")
    encoders.set_defaults(run=_encoders)
    return parser


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """Run a command line's work: user errors are one stderr line and exit status 2, a
    failed training run 1, Ctrl-C 130."""
    try:
        return command() or 0
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{prog}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bertclf", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
