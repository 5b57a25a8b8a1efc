"""optax_nadam: the NAdam of TF/Keras and PyTorch as an optax transformation."""

from optax_nadam.alias import nadam, nadamw
from optax_nadam.grouped import GroupedLeaves, GroupedState, group_state, grouped, ungroup_state
from optax_nadam.transform import ScaleByNadamState, scale_by_nadam

__version__ = "0.1.0"

__all__ = [
    "GroupedLeaves",
    "GroupedState",
    "ScaleByNadamState",
    "group_state",
    "grouped",
    "nadam",
    "nadamw",
    "scale_by_nadam",
    "ungroup_state",
]
