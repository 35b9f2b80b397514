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


class SavedModelClassifier(mlflow.pyfunc.PythonModel):
    """Raw texts in; predicted label, its probability and the logits out."""

    def load_context(self, context):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

        path = context.artifacts["saved_model"]
        self.model = tf.saved_model.load(path)
        card = Path(path) / "assets.extra" / "bertclf.json"  # bertclf.outdir.card_path
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
        logits = self.model(tf.constant(texts)).numpy()
        # bertclf.export.probabilities, copied: this file is all a logged model carries.
        if logits.shape[1] == 1:
            positive = 1 / (1 + np.exp(-logits[:, 0]))
            probs = np.stack([1 - positive, positive], axis=1)
        else:
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return pd.DataFrame({"label": [self.class_names[i] for i in best],
                             "probability": probs[np.arange(len(best)), best]})


mlflow.models.set_model(SavedModelClassifier())
