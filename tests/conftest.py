import os

# The parity tests build Hugging Face models from configs only; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile

import jax

# Tests build the same small programs many times (one evaluator or model per test); compile each once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="maskformer_jax_test_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
