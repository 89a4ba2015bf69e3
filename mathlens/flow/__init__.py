"""The continuous Transformer of Tai, Liu, Li and Chan and its discretisations (THEORY §2-§9)."""

from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig
from mathlens.flow.hooks import HookPoint
from mathlens.flow.layers import Attention, FeedForward, Norm
from mathlens.flow.operators import (
    attention_kernel,
    attention_operator,
    attention_weights,
    project_rms,
    project_s1,
    project_s1_distance,
    project_s2,
)
from mathlens.flow.schemes import lie_step, parallel_step, strang_step

__all__ = [
    "Attention", "FeedForward", "FlowBlock", "FlowConfig", "HookPoint", "Norm",
    "attention_kernel", "attention_operator", "attention_weights", "lie_step", "parallel_step",
    "project_rms", "project_s1", "project_s1_distance", "project_s2", "strang_step",
]
