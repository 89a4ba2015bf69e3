"""The continuous Transformer of Tai, Liu, Li and Chan and its discretisations (THEORY §2-§9)."""

from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig
from mathlens.flow.continuous import ContinuousTransformer
from mathlens.flow.convergence import (
    ConvergenceResult,
    convergence_studies,
    convergence_study,
    reference_solution,
)
from mathlens.flow.extensions import ConvFlowBlock, VisionFlowTransformer, conv_attention_operator
from mathlens.flow.hooks import HookPoint
from mathlens.flow.layers import Attention, FeedForward, Norm
from mathlens.flow.limits import (
    attention_quadrature,
    clustering,
    head_quadrature,
    literal_confinement,
    score_variance,
)
from mathlens.flow.manifold import tangent_project
from mathlens.flow.operators import (
    attention_kernel,
    attention_operator,
    attention_weights,
    project_rms,
    project_s1,
    project_s1_distance,
    project_s2,
)
from mathlens.flow.reference import VaswaniParams, from_vaswani, to_vaswani, vaswani_post_ln_block
from mathlens.flow.schemes import lie_step, parallel_step, strang_step
from mathlens.flow.studies import block_equivalence, dt_absorption, sphere_residual

__all__ = [
    "Attention", "ContinuousTransformer", "ConvFlowBlock", "ConvergenceResult", "VisionFlowTransformer",
    "conv_attention_operator", "FeedForward", "FlowBlock", "FlowConfig",
    "HookPoint", "Norm", "VaswaniParams", "attention_kernel", "attention_operator", "attention_quadrature",
    "attention_weights", "block_equivalence", "clustering", "convergence_studies", "convergence_study", "dt_absorption", "from_vaswani",
    "head_quadrature", "lie_step", "literal_confinement", "parallel_step", "project_rms", "project_s1", "project_s1_distance",
    "project_s2", "reference_solution", "score_variance", "sphere_residual", "strang_step", "tangent_project",
    "to_vaswani", "vaswani_post_ln_block",
]
