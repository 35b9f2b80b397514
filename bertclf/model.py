"""The classifier: encoder inputs -> BERT encoder (trainable) -> dropout -> dense logits.

Training feeds it token ids from the cache (`bertclf.tokens`); `text_classifier` puts the
preprocessor in front of it for raw strings, as the notebook's model did.
"""

from __future__ import annotations

import tensorflow as tf

from bertclf.encoders import EncoderSpec, load_encoder_layer, load_preprocessor

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


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


def text_classifier(spec: EncoderSpec, classifier: tf.keras.Model, seq_len: int) -> tf.keras.Model:
    """Raw strings -> preprocessor -> `classifier`, the notebook's end-to-end model."""
    import tensorflow_hub as hub

    preprocessor = load_preprocessor(spec)
    text = tf.keras.Input(shape=(), dtype=tf.string, name="text")
    tokens = hub.KerasLayer(preprocessor.tokenize, name="tokenize")(text)
    packed = hub.KerasLayer(preprocessor.bert_pack_inputs, name="pack",
                            arguments=dict(seq_length=seq_len))([tokens])
    return tf.keras.Model(text, classifier(packed), name="text_classifier")
