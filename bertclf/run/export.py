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
from bertclf.run.model import INPUT_NAMES
from bertclf.run.outputs import card_path, check_exported


class TextClassifier(tf.Module):
    """Raw strings -> preprocessor (truncating as in training) -> trained classifier -> logits."""

    def __init__(self, preprocessor, classifier: tf.keras.Model, seq_len: int,
                 class_names: list[str], truncation: str = "head", head_tokens: int | None = None):
        super().__init__(name="text_classifier")
        self.preprocessor = preprocessor
        self.classifier = classifier
        self.packing = (seq_len, truncation, head_tokens)
        self.seq_len = tf.Variable(seq_len, trainable=False, dtype=tf.int32, name="seq_len")
        self.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string,
                                       name="class_names")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def preprocess(self, text):
        """The encoder inputs the classifier sees for `text` (the ids training used)."""
        return pack_inputs(self.preprocessor, text, *self.packing)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def __call__(self, text):
        return self.classifier(self.preprocess(text), training=False)

    @tf.function(input_signature=[{name: tf.TensorSpec([None, None], tf.int32, name=name)
                                   for name in INPUT_NAMES}])
    def logits(self, inputs):
        """Logits from encoder inputs of any length (batches padded only to their longest)."""
        return self.classifier(inputs, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"logits": self(text)}


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
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    card = {"class_names": class_names, "seq_len": seq_len, "truncation": truncation,
            "head_tokens": head_tokens, **(card or {})}
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
