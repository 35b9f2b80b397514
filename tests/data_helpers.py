"""Writers of small labelled text folders, and checks shared by the data-loading tests."""

from collections import Counter
from pathlib import Path

import pytest

from bertclf.errors import DataError


def write_classes(folder: Path, counts: dict[str, int], reverse: bool = False) -> None:
    """folder/<class>/<i>.txt holding '<class> review <i>'."""
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in sorted(range(count), reverse=reverse):
            (folder / name / f"{i}_7.txt").write_text(f"{name} review {i}", encoding="utf-8")


def pairs(dataset) -> Counter:
    """(text, class name) of every example of every split."""
    return Counter((text, dataset.class_names[label])
                   for split in (dataset.train, dataset.validation, dataset.test)
                   for text, label in zip(split.texts, split.labels, strict=True))


def imdb_like(root: Path) -> Path:
    """A miniature aclImdb/ with the official archive's extra files and folders."""
    write_classes(root / "aclImdb" / "train", {"neg": 10, "pos": 10, "unsup": 5})
    write_classes(root / "aclImdb" / "test", {"neg": 5, "pos": 5})
    (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://x", encoding="utf-8")
    (root / "aclImdb" / "train" / "labeledBow.feat").write_text("0 9:1", encoding="utf-8")
    (root / "aclImdb" / "imdb.vocab").write_text("the\nmovie", encoding="utf-8")
    (root / "aclImdb" / "README").write_text("readme", encoding="utf-8")
    return root


def assert_data_error(call, *fragments) -> str:
    """call() raises a one-line DataError holding every fragment."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message
