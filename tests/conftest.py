import os

# The parity tests build Hugging Face models from configs only; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
