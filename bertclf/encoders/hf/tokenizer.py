"""A Hugging Face checkpoint's tokenizer settings, as far as the TF Text preprocessor can follow.

Lower-casing comes from ``tokenizer_config.json`` / ``tokenizer.json`` / ``config.json``
(``do_lower_case``); then a SentencePiece vocab is lower-cased (AlbertTokenizer's default), a
WordPiece one is judged by the checkpoint's name (``uncased`` / ``cased``), then by the vocab (a
cased vocab has capitalised words).
"""

from __future__ import annotations

from bertclf.encoders.hf.checkpoint import Checkpoint, read_json, read_vocab


def lower_case(checkpoint: Checkpoint) -> tuple[bool, str]:
    """Whether the vocab is uncased, and where that was read."""
    folder = checkpoint.folder
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = read_json(tokenizer_config).get("do_lower_case")
        if isinstance(value, bool):
            return value, "tokenizer_config.json do_lower_case"
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        normalizer = read_json(tokenizer_json).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer" and isinstance(
            normalizer.get("lowercase"), bool
        ):
            return normalizer["lowercase"], "tokenizer.json normalizer"
    if isinstance(checkpoint.config.get("do_lower_case"), bool):
        return checkpoint.config["do_lower_case"], "config.json do_lower_case"
    if checkpoint.tokenizer == "sentencepiece":
        return True, "AlbertTokenizer's default"
    name = f"{checkpoint.config.get('_name_or_path', '')} {folder.resolve().name}".lower()
    if "uncased" in name:
        return True, "the name says uncased"
    if "cased" in name:
        return False, "the name says cased"
    words = [t.removeprefix("##") for t in read_vocab(checkpoint) if not t.startswith("[")]
    capitalised = sum(w != w.lower() for w in words)
    if capitalised > 0.01 * max(len(words), 1):
        return False, "the vocab has capitalised words"
    return True, "the vocab has no capitalised words"


def tokenizer_notes(checkpoint: Checkpoint, lower_case: bool) -> list[str]:
    """Tokenizer settings the TF Text preprocessor cannot follow."""
    path = checkpoint.folder / "tokenizer_config.json"
    settings = read_json(path) if path.is_file() else {}
    notes = []
    if checkpoint.tokenizer == "sentencepiece":
        if settings.get("keep_accents") is True:
            notes.append("tokenizer_config.json sets keep_accents=true, but the preprocessor "
                         "strips accents; token ids of accented words may differ")
        if settings.get("remove_space") is False:
            notes.append("tokenizer_config.json sets remove_space=false, but the preprocessor "
                         "collapses whitespace; token ids may differ")
        return notes
    strip = settings.get("strip_accents")
    if strip is not None and strip != lower_case:
        notes.append(f"tokenizer_config.json sets strip_accents={strip}, but the preprocessor "
                     f"strips accents exactly when it lower-cases (lower_case={lower_case}); "
                     "token ids of accented words may differ")
    if settings.get("tokenize_chinese_chars") is False:
        notes.append("tokenizer_config.json sets tokenize_chinese_chars=false, but the "
                     "preprocessor always splits CJK characters")
    return notes
