import os

# The parity tests build Hugging Face models from configs only; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests compile hundreds of small programs and run each a few times: LLVM at -O0 compiles them about
# twice as fast as the default -O2 (the programs compute the same thing). Subprocesses inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

# On an accelerator, tests and the subprocesses they start share the device: allocate as needed.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import tempfile

import jax

# Tests compare with float32 references: full float32 matmuls and convolutions on every backend (GPUs
# default to TF32). A model built from a config uses config.model.precision instead (parity tests set it).
jax.config.update("jax_default_matmul_precision", "highest")
# Tests build the same small programs many times (one evaluator or model per test); compile each once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="maskformer_jax_test_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
