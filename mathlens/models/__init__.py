"""Decoder-only language models on the flow, and converters from/to Hugging Face."""

from mathlens.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
