"""The Keras optimizer API (tf-keras legacy and Keras 3) over `scale_by_nadam`.

`Nadam(...)` *is* an optax `GradientTransformation` and offers the Keras
methods (``apply_gradients``, ``get_slot``, ``get_config``...) as pure
functions of an explicit state. Modules:

- `optimizer`: the `Nadam` class and `KerasNadamState`.
- `config`: keyword and config validation, the psi rule for peer configs.
- `schedules`: Keras learning-rate schedule configs as optax schedules.
- `methods`: the Keras methods on explicit state.
- `state`: finding, naming and replacing nodes of the state.
"""

from optax_nadam.keras.optimizer import KerasNadamState, Nadam

__all__ = ["KerasNadamState", "Nadam"]
