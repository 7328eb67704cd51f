"""Contrastive losses over stacks of runs: pure functions plus thin validating modules.

Every loss takes two views ``z1, z2`` of shape ``(R, B, D)`` (or ``(B, D)``), optional
labels ``(B,)`` / ``(R, B)`` with -1 for unlabelled rows, and returns one value per run.
"""

from __future__ import annotations

from torch import nn

from .barlow import BarlowTwinsLoss, barlow_twins
from .clop import DISTANCES, PROTOTYPE_KINDS, CLOPLoss, WithCLOP, clop_term, make_prototypes
from .cosine_pair import AlignLoss, RepelLoss, cosine_pair
from .dcl import DCLLoss, dcl
from .ntxent import NTXentLoss, nt_xent
from .supcon import SupConLoss, supcon
from .vicreg import VICRegLoss, vicreg

#: base losses by name; the temperature applies to the cosine losses that have one
BASE_LOSSES = {
    "ntxent": NTXentLoss,
    "supcon": SupConLoss,
    "dcl": DCLLoss,
    "vicreg": VICRegLoss,
    "barlow": BarlowTwinsLoss,
    "align": AlignLoss,
    "repel": RepelLoss,
}
TEMPERATURE_LOSSES = ("ntxent", "supcon", "dcl")


def build_loss(
    name: str, *, temperature: float = 0.5, clop_weight: float = 0.0, num_classes: int | None = None,
    dim: int | None = None, distance: str = "cosine", prototypes: str = "orthonormal",
    prototype_seed: int = 0,
) -> nn.Module:
    """A base loss by name, with the CLOP term added when ``clop_weight > 0``."""
    if name not in BASE_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(BASE_LOSSES)}, got {name!r}")
    base = BASE_LOSSES[name](temperature) if name in TEMPERATURE_LOSSES else BASE_LOSSES[name]()
    if clop_weight < 0:
        raise ValueError(f"clop_weight must be >= 0, got {clop_weight!r}")
    if clop_weight == 0:
        return base
    if num_classes is None or dim is None:
        raise ValueError("num_classes and dim are required when clop_weight > 0")
    return WithCLOP(base, CLOPLoss(num_classes, dim, clop_weight, distance, prototypes, prototype_seed))


__all__ = [
    "AlignLoss", "BASE_LOSSES", "BarlowTwinsLoss", "CLOPLoss", "DCLLoss", "DISTANCES",
    "NTXentLoss", "PROTOTYPE_KINDS", "RepelLoss", "SupConLoss", "TEMPERATURE_LOSSES",
    "VICRegLoss", "WithCLOP", "barlow_twins", "build_loss", "clop_term", "cosine_pair", "dcl",
    "make_prototypes", "nt_xent", "supcon", "vicreg",
]
