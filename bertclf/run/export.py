"""Export a trained classifier as one SavedModel from raw strings to logits, and score with it.

The export holds preprocessor + encoder + head, so it reloads with plain
`tf.saved_model.load` in a process that imports only tensorflow and tensorflow_text,
and TF Serving can host it through its `serving_default` signature.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertclf.data.packing import pack_inputs
from bertclf.encoders.map import EncoderSpec, load_preprocessor
from bertclf.errors import UserError
from bertclf.run.model import INPUT_NAMES
from bertclf.run.outputs import card_path, check_exported

TEXT = tf.TensorSpec([None], tf.string, name="text")
INPUTS = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUT_NAMES}
AGREE_ON = ("class_names", "seq_len", "truncation", "head_tokens")  # what members must share


class RawTextModel(tf.Module):
    """What an exported model offers: `preprocess` (strings -> encoder inputs), `logits`
    (encoder inputs -> logits), `__call__` (strings -> logits), the `serve` signature
    (strings -> {"logits"}) and its `class_names` and `seq_len`. Subclasses define the two
    first."""

    def __init__(self, name: str, seq_len: int, class_names: list[str]):
        super().__init__(name=name)
        self.seq_len = tf.Variable(seq_len, trainable=False, dtype=tf.int32, name="seq_len")
        self.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string,
                                       name="class_names")

    @tf.function(input_signature=[TEXT])
    def __call__(self, text):
        return self.logits(self.preprocess(text))

    @tf.function(input_signature=[TEXT])
    def serve(self, text):
        return {"logits": self(text)}


class TextClassifier(RawTextModel):
    """Raw strings -> preprocessor (truncating as in training) -> trained classifier -> logits."""

    def __init__(self, preprocessor, classifier: tf.keras.Model, seq_len: int,
                 class_names: list[str], truncation: str = "head", head_tokens: int | None = None):
        super().__init__("text_classifier", seq_len, class_names)
        self.preprocessor = preprocessor
        self.classifier = classifier
        self.packing = (seq_len, truncation, head_tokens)

    @tf.function(input_signature=[TEXT])
    def preprocess(self, text):
        """The encoder inputs the classifier sees for `text` (the ids training used)."""
        return pack_inputs(self.preprocessor, text, *self.packing)

    @tf.function(input_signature=[INPUTS])
    def logits(self, inputs):
        """Logits from encoder inputs of any length (batches padded only to their longest)."""
        return self.classifier(inputs, training=False)


class EnsembleClassifier(RawTextModel):
    """Exported models of one configuration (e.g. its training seeds) as one: the text is
    preprocessed once (the members share their preprocessing), and the logits are the mean
    of the members' logits on the same inputs. Costs N times one member's encoder."""

    def __init__(self, members: list, seq_len: int, class_names: list[str]):
        super().__init__("ensemble_classifier", seq_len, class_names)
        self.members = list(members)

    @tf.function(input_signature=[TEXT])
    def preprocess(self, text):
        """The encoder inputs every member sees for `text` (the first member's packing)."""
        packed = self.members[0].preprocess(text)
        return {name: packed[name] for name in INPUT_NAMES}

    @tf.function(input_signature=[INPUTS])
    def logits(self, inputs):
        """The mean of the members' logits on the same encoder inputs."""
        return tf.add_n([member.logits(inputs) for member in self.members]) / len(self.members)


def export_model(classifier: tf.keras.Model, spec: EncoderSpec, class_names: list[str],
                 seq_len: int, path: str | Path, card: dict | None = None, *,
                 truncation: str = "head", head_tokens: int | None = None) -> Path:
    """Save the raw-text SavedModel at `path` with a JSON card in `assets.extra/`."""
    path = Path(path)
    # A fresh functional wrapper shares the weights but not the optimizer's slots, which
    # would triple the export's size.
    inference = tf.keras.Model(classifier.inputs, classifier.outputs, name=classifier.name)
    module = TextClassifier(load_preprocessor(spec), inference, seq_len, class_names,
                            truncation, head_tokens)
    card = {"class_names": class_names, "seq_len": seq_len, "truncation": truncation,
            "head_tokens": head_tokens, **(card or {})}
    return _save(module, path, card)


def export_ensemble(members: list[str | Path], path: str | Path,
                    card: dict | None = None) -> Path:
    """Save the exported models in `members` as one `EnsembleClassifier` SavedModel at
    `path`, its card the members' shared values (class names, packing, encoder, data),
    `ensemble` (default: {"members": N}) and `card`. Raises UserError unless there are two
    members or more that agree on their class names, sequence length and truncation."""
    if len(members) < 2:
        raise UserError(f"an ensemble needs two members or more, got {len(members)}")
    cards = [read_card(member) for member in members]
    for key in AGREE_ON:
        values = [c.get(key) for c in cards]
        if any(v != values[0] for v in values):
            raise UserError(f"the members disagree on {key} ({', '.join(map(str, values))}): "
                            "an ensemble needs models of one configuration")
    first = cards[0]
    module = EnsembleClassifier([load_model(m) for m in members], first["seq_len"],
                                first["class_names"])
    shared = {key: first.get(key) for key in (*AGREE_ON, "encoder", "data")}
    return _save(module, path, {**shared, "ensemble": {"members": len(members)},
                                **(card or {})})


def read_card(path: str | Path) -> dict:
    """The JSON card of the exported model at `path`; raises UserError if it has none."""
    card = card_path(check_exported(path))
    if not card.is_file():
        raise UserError(f"{path}: an exported model without its card ({card})")
    return json.loads(card.read_text(encoding="utf-8"))


def _save(module: RawTextModel, path: Path, card: dict) -> Path:
    """Save `module` at `path` (serving_default: its `serve`) with `card` in assets.extra/."""
    path = Path(path)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    card_path(path).parent.mkdir(exist_ok=True)
    card_path(path).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


def load_model(path: str | Path):
    """Reload an exported model; raises UserError if `path` is not one."""
    import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

    return tf.saved_model.load(str(check_exported(path)))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities [N, C] from logits [N, 1] (sigmoid) or [N, C] (softmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[-1] == 1:
        positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict(path: str | Path, texts: list[str]) -> list[tuple[str, float]]:
    """Score `texts` with an exported model: (predicted class name, its probability) each."""
    model = load_model(path)
    names = [n.decode() for n in model.class_names.numpy()]
    probs = probabilities(model(tf.constant(texts)).numpy())
    return [(names[i], float(p[i])) for p, i in zip(probs, probs.argmax(axis=1), strict=True)]
