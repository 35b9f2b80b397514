"""The classifier: encoder inputs -> BERT encoder (trainable) -> dropout -> dense logits.

Training feeds it token ids from the cache (`bertclf.data.tokens`); `text_classifier` puts the
preprocessor in front of it for raw strings, as the notebook's model did.
"""

from __future__ import annotations

import tensorflow as tf

from bertclf.encoders.bert_encoder import INPUT_NAMES
from bertclf.encoders.map import EncoderSpec, load_encoder_layer, load_preprocessor


def num_logits(num_classes: int) -> int:
    """One logit for two classes (sigmoid), one per class otherwise (softmax)."""
    return 1 if num_classes == 2 else num_classes


def build_classifier(spec: EncoderSpec, num_classes: int, dropout: float = 0.1) -> tf.keras.Model:
    """A Keras model from the three encoder inputs (any sequence length) to logits."""
    inputs = {name: tf.keras.Input(shape=(None,), dtype=tf.int32, name=name)
              for name in INPUT_NAMES}
    encoder = load_encoder_layer(spec, trainable=True)
    pooled = encoder(inputs)["pooled_output"]
    x = tf.keras.layers.Dropout(dropout, name="dropout")(pooled)
    logits = tf.keras.layers.Dense(num_logits(num_classes), name="classifier")(x)
    return tf.keras.Model(inputs, logits, name="bert_classifier")


def loss_and_metric(num_classes: int) -> tuple[tf.keras.losses.Loss, tf.keras.metrics.Metric]:
    """The from-logits loss and the accuracy metric (named `accuracy`) for `num_classes`."""
    if num_classes == 2:
        return (tf.keras.losses.BinaryCrossentropy(from_logits=True),
                tf.keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0))
    return (tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"))


def text_classifier(spec: EncoderSpec, classifier: tf.keras.Model, seq_len: int,
                    truncation: str = "head", head_tokens: int | None = None) -> tf.keras.Model:
    """Raw strings -> preprocessor -> `classifier`, the notebook's end-to-end model."""
    from bertclf.data.packing import TextToInputs

    text = tf.keras.Input(shape=(), dtype=tf.string, name="text")
    packed = TextToInputs(load_preprocessor(spec), seq_len, truncation, head_tokens,
                          name="preprocess")(text)
    return tf.keras.Model(text, classifier(packed), name="text_classifier")
