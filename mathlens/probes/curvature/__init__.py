"""Loss-landscape curvature and flat minima (THEORY.md §11.2 (3), prediction 18).

Operators (``operators.py``) are kept apart from the algorithms that use them (``algorithms.py``):

* operators: :class:`ParamSpace`, :class:`ModelLoss`, :class:`HessianOperator` (double backward,
  forward-over-reverse, finite differences), :class:`GaussNewtonOperator`, :class:`MatrixOperator`;
  exact products get through fused attention by :func:`twice_differentiable_attention` (``attention_hvp.py``);
* algorithms: :func:`lanczos`, :func:`eigsh_top`, :func:`power_iteration`, :func:`hutchinson`,
  :func:`hutchpp`, :func:`slq_density`;
* model-level functions: :func:`top_eigenvalues`, :func:`hessian_trace`, :func:`spectral_density`;
* flatness: :func:`keskar_sharpness`, :func:`adaptive_sharpness`, :func:`pac_bayes_sigma`;
  the attention symmetry: :func:`apply_qk_symmetry`, :func:`symmetry_check`;
* landscapes: :func:`filter_normalized_direction`, :func:`loss_slice_1d`, :func:`loss_surface_2d`,
  :func:`plot_landscape`;
* empirical NTK: :func:`empirical_ntk`, :func:`kernel_target_alignment`, :func:`ntk_change`;
* training: :class:`CurvatureTracker`.
"""

from mathlens.probes.curvature.algorithms import (
    DensityResult,
    EigenResult,
    TraceResult,
    eigsh_top,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
)
from mathlens.probes.curvature.attention_hvp import twice_differentiable_attention
from mathlens.probes.curvature.callback import CurvatureTracker
from mathlens.probes.curvature.landscape import (
    LandscapeResult,
    filter_normalized_direction,
    loss_slice_1d,
    loss_surface_2d,
    plot_landscape,
)
from mathlens.probes.curvature.ntk import NTKResult, empirical_ntk, kernel_target_alignment, ntk_change
from mathlens.probes.curvature.operators import (
    GaussNewtonOperator,
    HessianOperator,
    MatrixOperator,
    ModelLoss,
    ParamSpace,
    eval_mode,
)
from mathlens.probes.curvature.sharpness import (
    PacBayesResult,
    SharpnessResult,
    adaptive_sharpness,
    keskar_sharpness,
    pac_bayes_sigma,
)
from mathlens.probes.curvature.spectrum import hessian_operator, hessian_trace, spectral_density, top_eigenvalues
from mathlens.probes.curvature.symmetry import (
    QKPair,
    SymmetryResult,
    apply_qk_symmetry,
    find_qk_pairs,
    random_invertible,
    symmetry_check,
)

__all__ = [
    "DensityResult", "EigenResult", "TraceResult", "eigsh_top", "hutchinson", "hutchpp", "lanczos",
    "power_iteration", "slq_density", "CurvatureTracker", "LandscapeResult", "filter_normalized_direction",
    "loss_slice_1d", "loss_surface_2d", "plot_landscape", "NTKResult", "empirical_ntk", "kernel_target_alignment",
    "ntk_change", "GaussNewtonOperator", "HessianOperator", "MatrixOperator", "ModelLoss", "ParamSpace",
    "eval_mode", "PacBayesResult", "SharpnessResult", "adaptive_sharpness", "keskar_sharpness", "pac_bayes_sigma",
    "hessian_operator", "hessian_trace", "spectral_density", "top_eigenvalues", "QKPair", "SymmetryResult",
    "apply_qk_symmetry", "find_qk_pairs", "random_invertible", "symmetry_check", "twice_differentiable_attention",
]
