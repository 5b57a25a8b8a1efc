"""The Keras optimizer API (tf-keras legacy and Keras 3) over `scale_by_nadam`.

`Nadam(...)` *is* an optax `GradientTransformation` and offers the Keras
methods (``apply_gradients``, ``get_slot``, ``get_config``...) as pure
functions of an explicit state. Modules:

- `optimizer`: the `Nadam` class: the Keras constructor, ``get_config``/``from_config``.
- `config`: `NadamConfig`, the frozen validated arguments; the psi rule for peer configs.
- `build`: ``build(config)``, the optax transformation; the update order; `KerasNadamState`.
- `schedules`: Keras learning-rate schedule configs as optax schedules.
- `methods`: `KerasMethods`, Nadam's base: a config's transformation as an immutable
  value (equal configs: equal, equally hashed optimizers) and the Keras methods on
  explicit state.
- `state`: finding, naming and replacing nodes of the state.
"""

from optax_nadam.keras.optimizer import KerasNadamState, Nadam, NadamConfig

__all__ = ["KerasNadamState", "Nadam", "NadamConfig"]
