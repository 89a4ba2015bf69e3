"""Loss-landscape curvature and flat minima (THEORY.md §11.2 (3), prediction 18).

Operators (``operators.py``) are kept apart from the algorithms that use them (``algorithms.py``):

* operators: :class:`ParamSpace`, :class:`ModelLoss`, :class:`HessianOperator` (double backward,
  forward-over-reverse, finite differences), :class:`GaussNewtonOperator`, :class:`MatrixOperator`;
* algorithms: :func:`lanczos`, :func:`eigsh_top`, :func:`power_iteration`, :func:`hutchinson`,
  :func:`hutchpp`, :func:`slq_density`;
* model-level functions: :func:`top_eigenvalues`, :func:`hessian_trace`, :func:`spectral_density`;
* flatness: :func:`keskar_sharpness`, :func:`adaptive_sharpness`, :func:`pac_bayes_sigma`,
  :func:`apply_qk_symmetry`, :func:`symmetry_check`;
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
from mathlens.probes.curvature.operators import (
    GaussNewtonOperator,
    HessianOperator,
    MatrixOperator,
    ModelLoss,
    ParamSpace,
    eval_mode,
)
from mathlens.probes.curvature.spectrum import hessian_operator, hessian_trace, spectral_density, top_eigenvalues

__all__ = [
    "DensityResult", "EigenResult", "TraceResult", "eigsh_top", "hutchinson", "hutchpp", "lanczos",
    "power_iteration", "slq_density", "GaussNewtonOperator", "HessianOperator", "MatrixOperator", "ModelLoss",
    "ParamSpace", "eval_mode", "hessian_operator", "hessian_trace", "spectral_density", "top_eigenvalues",
]
