"""The SIFT engine: pure torch (no transformers), usable on CPU and CUDA."""

from .config import OptimizerConfig
from .direction import sift_direction, sift_direction_reference
from .linalg import alignment, msign, msign_exact, polar_of_pair
from .optimizer import BlockReport, SiftOptimizer, StepReport, spectral_scale
from .pome import pome_edit
from .routing import Block, Route, route_parameters
from .updates import blur_combine

__all__ = [
    "Block",
    "BlockReport",
    "OptimizerConfig",
    "Route",
    "SiftOptimizer",
    "StepReport",
    "alignment",
    "blur_combine",
    "msign",
    "msign_exact",
    "polar_of_pair",
    "pome_edit",
    "route_parameters",
    "sift_direction",
    "sift_direction_reference",
    "spectral_scale",
]
