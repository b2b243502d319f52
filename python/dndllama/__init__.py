"""dndllama: D&D game-master scenarios in markdown -> a fine-tuned, quantized GGUF for Cactus."""

__version__ = "0.1.0"
