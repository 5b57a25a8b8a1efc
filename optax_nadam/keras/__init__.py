"""The Keras optimizer API (tf-keras legacy and Keras 3) over `scale_by_nadam`.

`Nadam(...)` (tf-keras legacy's schedule) and `Nadam.keras3(...)` (Keras 3's)
*are* optax `GradientTransformation`s with the Keras methods (``apply_gradients``,
``get_slot``, ``get_config``...) as pure functions of an explicit state. Modules:

- `optimizer`: the `Nadam` class: constructors, config, the Keras methods.
- `config`: `NadamConfig`, the frozen validated arguments; the psi rule for peer configs.
- `build`: ``build(config)``, the optax transformation; the update order; `KerasNadamState`.
- `schedules`: Keras learning-rate schedule configs as optax schedules.
- `state`: the state work of the Keras methods (find, slots, ``get_weights`` layout).
"""

from optax_nadam.keras.optimizer import KerasNadamState, Nadam, NadamConfig

__all__ = ["KerasNadamState", "Nadam", "NadamConfig"]
