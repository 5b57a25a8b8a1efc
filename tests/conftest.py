"""Test-wide setup: peers' environment variables must be set before they import."""

import os

# Keras 3 is exercised on the jax backend; set before any import of keras.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
