"""Fine-tune one BERT-family text classifier: data -> encoders -> run (train, export).

The stages are packages: `bertclf.data` (archives, splits, token ids, batches),
`bertclf.encoders` (the encoder map, TF Hub-format BERT models, tiny, Hugging Face imports)
and `bertclf.run` (config, model, training, evaluation, export, the run's files on disk).
`from bertclf import train, TrainConfig` loads them (and TensorFlow) only when asked for.

tensorflow-hub needs the Keras 2 API (tf-keras), which TensorFlow only picks when
TF_USE_LEGACY_KERAS is set before it is first imported, so set it here, with the quiet
defaults (bertclf.quiet) that must also come first.
"""

import os

from bertclf import quiet

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
quiet.set_defaults()

# Public names -> the module that defines them, imported on first use: importing bertclf
# alone must not import TensorFlow (the sweep's process and the command lines rely on it).
_LAZY = {"train": "bertclf.run.train", "TrainConfig": "bertclf.run.config"}
_NEEDS_TENSORFLOW = {"train"}  # started quietly first, as the command line does

__all__ = ["train", "TrainConfig"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bertclf' has no attribute {name!r}")
    import importlib

    if name in _NEEDS_TENSORFLOW:
        quiet.load_tensorflow()
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
