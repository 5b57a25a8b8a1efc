"""Move NAdam optimizer state between Keras / PyTorch and optax_nadam.

`state_from_torch` and `state_from_keras` read a trained peer optimizer
(`torch.optim.NAdam` or its ``state_dict()``, tf-keras legacy
`tf_keras.optimizers.legacy.Nadam`, Keras 3 `keras.optimizers.Nadam`) and return
the state of ``tx.init(params)`` with the step count, the mu-product and the
moments filled in, so that training continues on the peer's trajectory.
`state_to_torch` and `state_to_keras` go the other way.

Matching is by position: the peer's i-th variable (torch: parameters in
``param_groups`` order; Keras: the order the optimizer was built with, or the
``var_list`` you pass) is ``jax.tree.leaves(params)[i]``. Counts, shapes, dtypes
and values are validated and every error names the variable and the params
leaf path. Array layouts must already agree (a torch ``Linear`` weight is
``(out, in)``, a Flax ``Dense`` kernel ``(in, out)``): convert params and state
alike before importing.

Hyperparameters (learning rate, b2, eps, weight decay, clipping) are not state:
they live in ``tx``; build it like the peer. b1 and the momentum schedule are
checked (one probe update on zero gradients): Keras 3's Nadam and
``tf_keras.optimizers.Nadam`` use ``momentum_decay=1.0``, not 0.004.

Nothing is evaluated or unpickled: torch state dicts must hold tensors, numpy
arrays and numbers only; never pass the output of ``torch.load`` of an untrusted
file without ``weights_only=True``.
"""

from optax_nadam.interop.from_keras import state_from_keras, state_to_keras
from optax_nadam.interop.from_torch import state_from_torch, state_to_torch

__all__ = ["state_from_keras", "state_from_torch", "state_to_keras", "state_to_torch"]
