"""Quiet by default: TensorFlow's and MLflow's own start-up lines are off, so that what a user
reads is the project's lines; `--verbose` (or BERTCLF_VERBOSE=1) shows them.

The settings travel in the environment, so the trial processes a sweep spawns, which import
`bertclf` first, are as quiet or as verbose as the command that started them. A user's own
TF_CPP_MIN_LOG_LEVEL is kept, and decides which start-up lines `load_tensorflow` lets through.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

VERBOSE_ENV = "BERTCLF_VERBOSE"
# Set where the user has not set them, unless verbose.
QUIET_ENV = {
    # TensorFlow's C++ INFO, WARNING and ERROR lines: oneDNN notices at start-up, and ERROR
    # lines that are not, e.g. "oneDNN supports DT_INT64 only on platforms with AVX-512.
    # Falling back to the default Eigen-based implementation" in every training run on some
    # hosts. A real failure reaches the user as a Python exception.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per model download
}
_KERAS_RELOAD = "Compiled the loaded model, but the compiled metrics have yet to be built"
# A native log line, in absl's format or TensorFlow's older one, and its severity letter.
# (before absl is set up, its time is "00:00:" and the seconds since 1970).
_RECORD = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:[\d.]+ +\d+ |"
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: ([IWEF]) )")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
# Errors TensorFlow logs at every start that are not: no GPU driver here, and the same GPU
# library registered twice.
_START_UP_ERRORS = re.compile(r"failed call to cuInit|Unable to register cu\w+ factory")
_set_here: set[str] = set()


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


# (logger, the start of a message it logs that is noise here): tf-keras' warning on every
# reload of a model saved before training; MLflow's on logging a model whose predict's type
# hint (a DataFrame) gives no signature.
_NOISE = [("tensorflow", _DropMessage(_KERAS_RELOAD)),
          ("mlflow.pyfunc", _DropMessage("Failed to infer model signature: Type hint"))]


def is_verbose() -> bool:
    """Whether --verbose (or BERTCLF_VERBOSE=1) asked for the libraries' own lines."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_defaults() -> None:
    """Quiet settings for this process and those it starts, unless verbose; call before
    TensorFlow or MLflow is imported."""
    if is_verbose():
        return
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            _set_here.add(name)
    for logger, noise in _NOISE:
        logging.getLogger(logger).addFilter(noise)


def set_verbose() -> None:
    """Show the libraries' own lines from now on, here and in processes started later."""
    os.environ[VERBOSE_ENV] = "1"
    for name in _set_here:
        os.environ.pop(name, None)
    _set_here.clear()
    for logger, noise in _NOISE:
        logging.getLogger(logger).removeFilter(noise)
    if "mlflow" in sys.modules:  # it read MLFLOW_LOGGING_LEVEL when it was imported
        logging.getLogger("mlflow").setLevel(logging.INFO)


def start_up_lines_kept(text: str, min_level: int) -> str:
    """`text` without the native log lines below `min_level` (0-3: INFO, WARNING, ERROR,
    FATAL), absl's notice that precedes them, and (from 2) the start-up errors that are not."""
    kept = []
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        severity = "IWEF".index(record.group(1) or record.group(2)) if record else None
        if line.startswith(_ABSL_NOTICE) and min_level >= 1:
            continue
        if severity is not None and (severity < min_level or (
                min_level >= 2 and severity == 2 and _START_UP_ERRORS.search(line))):
            continue
        kept.append(line)
    return "".join(kept)


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def load_tensorflow():
    """Import TensorFlow and find its devices, with the lines its C++ start-up writes before
    it reads TF_CPP_MIN_LOG_LEVEL held to that level (unless verbose); returns the module.

    Those lines go straight to file descriptor 2, so it is pointed at a temporary file while
    TensorFlow starts, and what passes is written back to stderr. Later calls just return
    the module."""
    if "tensorflow" in sys.modules or is_verbose():
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the GPU driver's start-up lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            sys.stderr.write(start_up_lines_kept(text, _min_level()))
            sys.stderr.flush()
    return tf
