"""dndllama: D&D game-master scenarios in markdown -> a fine-tuned, quantized GGUF for Cactus."""

import os

__version__ = "0.1.0"

# ggml's CPU threads meet at an OpenMP barrier after every op. libgomp's waiting threads spin for
# ~300k iterations first; on a machine running other work a spinning thread holds a core the thread
# it waits for needs, and generation fell from ~60 to ~6 tokens/s with one other busy process. A
# short spin keeps the quiet-machine speed and yields soon under load. libgomp reads this once, when
# the native module loads, so it is set here, before any import of it; a user's own value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
