"""Hook points: identity modules placed at every state worth capturing.

A :class:`HookPoint` returns its input unchanged; ``register_forward_hook`` on it sees the tensor.
Names are stable and greppable (``blocks.3.attn.hook_q``); see ``mathlens.probes.capture``.
"""

from torch import nn


class HookPoint(nn.Module):
    """Identity map that exposes a tensor to forward hooks."""

    def forward(self, x):
        return x

    @property
    def active(self) -> bool:
        """True when somebody listens (a forward hook is registered)."""
        return bool(self._forward_hooks)
