"""Test-wide setup: legacy Keras before TensorFlow loads, and a private cache per test session."""

import os
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Built models, extracted archives and token caches go to a throwaway folder, not ~/.cache.
os.environ.setdefault("BERTCLF_CACHE_DIR", tempfile.mkdtemp(prefix="bertclf-test-cache-"))
