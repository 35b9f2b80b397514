"""The tiny random BERT (L-2 H-128 A-2, a 4,096-word IMDB vocab) that runs everything offline.

``tools/make_tiny_vocab.py`` regenerates its vocab, ``assets/tiny_vocab.txt``.
"""

from __future__ import annotations

from pathlib import Path

from bertclf.cache import build_once
from bertclf.encoders.bert_encoder import BertConfig, build_bert_encoder, save_encoder
from bertclf.encoders.bert_preprocessor import save_preprocessor
from bertclf.run.outputs import is_saved_model

TINY_VOCAB = Path(__file__).parent / "assets" / "tiny_vocab.txt"


def tiny_config() -> BertConfig:
    """Config of the tiny random BERT: L-2 H-128 A-2, intermediate 512, the tiny vocab."""
    vocab_size = len(TINY_VOCAB.read_text(encoding="utf-8").splitlines())
    return BertConfig(vocab_size=vocab_size)


def _is_built(dest: Path) -> bool:
    return all(is_saved_model(dest / part) for part in ("encoder", "preprocess"))


def build_tiny(dest: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Build the tiny encoder and preprocessor into dest/encoder and dest/preprocess.

    Idempotent: an existing build is returned as is (whatever seed built it). Atomic: see
    ``bertclf.cache.build_once``. An empty ``dest`` folder is built into.
    """
    dest = Path(dest)

    def build(path: Path) -> None:
        save_encoder(build_bert_encoder(tiny_config(), seed=seed), path / "encoder")
        save_preprocessor(TINY_VOCAB, path / "preprocess")

    empty = False
    if dest.exists() and not _is_built(dest):
        empty = not any(dest.iterdir())
        if not empty:
            raise FileExistsError(f"{dest} exists but holds no complete tiny model; remove it")
    build_once(dest, build, replace=empty)
    return dest / "encoder", dest / "preprocess"
