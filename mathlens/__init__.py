"""mathlens: the mathematics of decoder-only Transformer language models.

Public names: ``GPTConfig``, ``GPT``, ``from_hf`` (and ``GPT.to_hf``); the continuous model lives in
``mathlens.flow``; measurement instruments in ``mathlens.probes``.
"""

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig", "from_hf", "__version__"]


def __getattr__(name):  # lazy: `import mathlens` stays cheap for the CLI
    if name in ("GPT", "GPTConfig"):
        from mathlens.models import gpt

        return getattr(gpt, name)
    if name == "from_hf":
        from mathlens.models.hf import from_hf

        return from_hf
    raise AttributeError(f"module 'mathlens' has no attribute {name!r}")
