"""optax_nadam: the NAdam of TF/Keras and PyTorch as an optax transformation."""

from optax_nadam.alias import nadam, nadamw
from optax_nadam.transform import ScaleByNadamState, scale_by_nadam

__version__ = "0.1.0"

__all__ = ["ScaleByNadamState", "nadam", "nadamw", "scale_by_nadam"]
