"""Move NAdam optimizer state and weights between Keras / PyTorch and optax_nadam.

`resume_from_torch` reads a torch checkpoint (file, Lightning ``.ckpt``, Hugging
Face folder, DCP directory, dict) once and returns ``(params, tx, opt_state)``,
tx built from the checkpoint's hyperparameters; `resume_from_keras` does the
same for a ``.keras`` / ``.h5`` / TF checkpoint file or a live Keras model, tx
being `optax_nadam.keras.Nadam` from the peer's config; `nnx_optimizer` puts
such a state into an ``nnx.Optimizer``. `state_from_torch` and `state_from_keras`
read a trained peer optimizer (`torch.optim.NAdam`, its ``state_dict()`` or
a `torch.save` file; tf-keras legacy `tf_keras.optimizers.legacy.Nadam`, Keras
3 `keras.optimizers.Nadam`)
and return the state of ``tx.init(params)`` with the step count, the
mu-product and the moments filled in, so that training continues on the
peer's trajectory. `params_from_torch` and `params_from_keras` read the model's
weights, also from files: a `torch.save` file, a Keras 3 ``.keras`` archive, a
tf-keras ``.h5`` model or a TF checkpoint, read as data (the model's code is
never imported).
`state_to_torch` and `state_to_keras` go the other way.

Which peer variable fills which params leaf is proven (torch: by names, by the
order torch guarantees for one param group beside a state dict torch saved, or
by shapes that leave one assignment; Keras: by slot names, object-graph edges,
the model config's layer order, or a unique fit) or refused with a ValueError saying how
to give the names (docs/migration.md, "The pairing rule"). A `layout`
``(params_leaf_path, array) -> array`` is applied to every weight and moment
read (a torch ``Linear`` weight is ``(out, in)``, a Flax ``Dense`` kernel
``(in, out)``). Counts, shapes, dtypes and values are
validated and every error names the variable and the params leaf path.

The import compares tx's next step with the step of the peer's stated
hyperparameters (learning rate, betas, eps, weight decay, maximize, clipping;
`optax_nadam.interop._check`) and refuses a mismatch, listing the peer's
hyperparameters beside tx's and the tx that matches; ``check_hyperparams=False``
allows a deliberate change. The tx `resume_from_torch` returns prints its
hyperparameters. The momentum schedule check (``check_schedule``)
catches Keras 3's ``momentum_decay=1.0``.

Nothing is evaluated or unpickled: files are read with
``torch.load(weights_only=True)``, safetensors by a bounded reader of our own,
DCP metadata by an unpickler limited to checkpoint-metadata classes;
in-memory state dicts must hold tensors, numpy arrays and numbers only.
"""

from optax_nadam.interop._nnx import nnx_optimizer
from optax_nadam.interop.keras import (
    optimizer_config_from_keras,
    params_from_keras,
    resume_from_keras,
    state_from_keras,
    state_to_keras,
)
from optax_nadam.interop.layout import TorchToFlax, torch_linear_to_flax, torch_to_flax
from optax_nadam.interop.torch import (
    params_from_torch,
    resume_from_torch,
    state_from_torch,
    state_to_torch,
)

__all__ = ["TorchToFlax", "nnx_optimizer", "optimizer_config_from_keras",
           "params_from_keras", "params_from_torch", "resume_from_keras", "resume_from_torch",
           "state_from_keras",
           "state_from_torch", "state_to_keras", "state_to_torch", "torch_linear_to_flax",
           "torch_to_flax"]
