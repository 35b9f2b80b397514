"""Fine-tune one BERT-family text classifier: data -> model -> train -> export.

tensorflow-hub needs the Keras 2 API (tf-keras), which TensorFlow only picks when
TF_USE_LEGACY_KERAS is set before it is first imported, so set it here, with the quiet
defaults (bertclf.quiet) that must also come first.
"""

import os

from bertclf import quiet

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
quiet.set_defaults()
