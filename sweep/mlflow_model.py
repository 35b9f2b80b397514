"""MLflow "models from code" definition of a logged classifier.

MLflow copies this file into each logged model; it loads the exported SavedModel
artifact with TensorFlow alone, so the model works wherever MLflow can load it,
without bertclf installed.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

BATCH_SIZE = 64  # texts per forward pass: a large request takes the memory of one batch


class SavedModelClassifier(mlflow.pyfunc.PythonModel):
    """Raw texts in (a column, "text" if there is one, or a list); out, one row per text:
    the predicted `label` (a class name) and its `probability`.

    Texts go through the SavedModel `BATCH_SIZE` at a time, so memory is bounded whatever
    the request's size and the answer is the same as for smaller requests.
    `params={"batch_size": N}` changes the batch where the model was logged with a params
    schema that declares `batch_size`; MLflow drops params that its signature lacks.
    """

    def load_context(self, context):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

        path = context.artifacts["saved_model"]
        self.model = tf.saved_model.load(path)
        card = Path(path) / "assets.extra" / "bertclf.json"  # bertclf.run.outputs.card_path
        self.class_names = json.loads(card.read_text())["class_names"]

    # MLflow warns about a predict without a type hint; for a DataFrame it neither converts
    # nor validates the input (lists and arrays still work).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        import tensorflow as tf

        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            texts = model_input[column].astype(str).tolist()
        else:
            texts = [str(t) for t in np.ravel(model_input)]
        batch = int((params or {}).get("batch_size") or BATCH_SIZE)
        if batch < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch}")
        probs = np.concatenate([_probabilities(self.model(tf.constant(texts[i:i + batch])))
                                for i in range(0, len(texts), batch)] or [np.zeros((0, 2))])
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [self.class_names[i] for i in best],
                             "probability": probs[np.arange(len(best)), best]})


def _probabilities(logits) -> np.ndarray:
    """Class probabilities of one batch's logits (one sigmoid logit or a softmax row): a
    copy of bertclf.run.export's, because this file is all a logged model carries."""
    logits = logits.numpy()
    if logits.shape[1] == 1:
        positive = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - positive, positive], axis=1)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


mlflow.models.set_model(SavedModelClassifier())
