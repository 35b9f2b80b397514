"""Regenerate tiny's vocab (bertclf/encoders/assets/tiny_vocab.txt) from the IMDB archive.

    python tools/make_tiny_vocab.py path/to/aclImdb_v1.tar.gz
"""

from __future__ import annotations

import collections
import re
import string
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertclf.cache import build_once
from bertclf.encoders.tiny import TINY_VOCAB

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # first, in BERT's order


def make_vocab(texts: Iterable[str], size: int) -> list[str]:
    """A BERT-layout wordpiece vocab of ``size`` entries: specials, characters, frequent words.

    Order: [PAD] [UNK] [CLS] [SEP] [MASK], single characters (a-z, 0-9, punctuation),
    ``##`` forms of letters and digits (BERT splits punctuation off, so it never continues a
    word), then the most frequent lower-cased words of ``texts`` (ties alphabetical).
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars if c.isalnum())]
    if size < len(vocab):
        raise ValueError(f"size must be at least {len(vocab)}")
    counts: collections.Counter[str] = collections.Counter()
    for doc in texts:
        doc = doc.lower().replace("<br />", " ")
        counts.update(w for w in re.findall(r"[^\W_]+", doc) if w.isascii())
    known = set(vocab)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    return vocab + words[: size - len(vocab)]


def imdb_train_texts(archive: str | Path) -> Iterator[str]:
    """The review texts of train/pos and train/neg in an aclImdb .tar.gz archive."""
    pattern = re.compile(r"(^|/)train/(pos|neg)/[^/]+\.txt$")
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and pattern.search(member.name):
                yield tar.extractfile(member).read().decode("utf-8")


def write_tiny_vocab(archive: str | Path, size: int = 4096) -> None:
    """Regenerate TINY_VOCAB from the IMDB archive."""
    vocab = make_vocab(imdb_train_texts(archive), size)
    build_once(TINY_VOCAB, lambda path: path.write_text("\n".join(vocab) + "\n",
                                                        encoding="utf-8"), replace=True)


if __name__ == "__main__":
    write_tiny_vocab(sys.argv[1])
