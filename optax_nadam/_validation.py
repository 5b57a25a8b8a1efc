"""Every numeric check of a hyperparameter, with one rule set (private).

A concrete hyperparameter must be a finite number (not a bool or string),
representable in the dtype it is used in and give finite steps; otherwise
construction raises a `ValueError` or `TypeError` naming the argument, its value
and the range. Traced values pass and are checked where concrete. Each range is
one `Range`, shared by the core and the Keras front; the table of ranges and
why: docs/reliability.md ("Hyperparameters: refused at construction, or finite").
"""

import dataclasses
import math
import numbers
from typing import Any, Optional

import jax
import numpy as np

F32_MAX = float(np.finfo(np.float32).max)  # 3.4e38
F32_TINY = float(np.finfo(np.float32).tiny)  # 1.2e-38, the smallest normal float32
# A float32 norm is at most sqrt(F32_MAX) ~ 1.8e19 when its square is finite; a multiplier
# of such a value (or of a NAdam direction, cut to 2**63) stays finite up to the same bound.
SQRT_F32_MAX = math.sqrt(F32_MAX)
INT32_MAX = 2**31 - 1


def _g(x: float) -> str:
  return f"{x:.3g}"


@dataclasses.dataclass(frozen=True)
class Range:
  """An interval of finite float32 numbers that a hyperparameter must lie in.

  Attributes:
    low: the lower bound.
    high: the upper bound (float32's largest finite value unless tighter).
    low_open: whether `low` itself is excluded.
    high_open: whether `high` itself is excluded.
    why: a short reason quoted in the error, e.g. how to get "no clipping".
  """

  low: float = 0.0
  high: float = F32_MAX
  low_open: bool = False
  high_open: bool = False
  why: str = ""

  def text(self) -> str:
    """The interval as ``[0, 1)``."""
    return (("(" if self.low_open else "[") + f"{_g(self.low)}, {_g(self.high)}"
            + (")" if self.high_open else "]"))

  def contains(self, x: float) -> bool:
    """Whether the Python float `x` lies in the interval (NaN never does)."""
    lo_ok = x > self.low if self.low_open else x >= self.low
    hi_ok = x < self.high if self.high_open else x <= self.high
    return lo_ok and hi_ok


# The core's ranges, stated once; the Keras front reuses them under its own names.
# b1/beta_1, b2/beta_2: below 1 in float32 too (1 - 2**-25 and above round to 1.0, where
# 1 - b = 0 and the moment would never move).
UNIT_OPEN = Range(0.0, 1.0 - 2.0**-25, high_open=True, why=(
    "b1 and b2 from 0.99999997 round to 1.0 in float32, where the moment never updates"))
NON_NEGATIVE = Range(0.0)  # eps, eps_root, momentum_decay, decay
WEIGHT_DECAY = Range(0.0, SQRT_F32_MAX, why=(
    "weight_decay * param is added to the step before the learning rate scales it; it "
    "must stay finite in float32 for params up to 1.8e19"))
LEARNING_RATE = Range(0.0, SQRT_F32_MAX, why=(
    "a NAdam step is the learning rate times a direction cut to at most 2**63 ~ 9.2e18; a "
    "larger rate can overflow float32"))
# lr * weight_decay above this makes the decoupled decay factor |1 - lr*wd| exceed 1:
# the params grow geometrically to inf.
MAX_DECAY_PRODUCT = 2.0


def _is_tracer(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def concrete_float(value: Any) -> Optional[float]:
  """Returns `value` as a Python float when it is a concrete scalar, else None.

  Args:
    value: a Python number, a numpy/jax scalar, or a tracer.

  Returns:
    The float value, or None when `value` is traced (its value unknown now)
    or not a number.
  """
  if _is_tracer(value):
    return None
  try:
    return float(value)
  except (TypeError, ValueError, OverflowError, jax.errors.ConcretizationTypeError):
    return None


def _scalar_value(name: str, value: Any, kind: str) -> Optional[float]:
  """`value` as a Python float (None when traced); TypeError if not a number."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {kind}, not a bool; got {value!r}.")
  if hasattr(value, "dtype") and hasattr(value, "shape"):  # jax/numpy arrays and scalars
    dtype = value.dtype
    # optax.inject_hyperparams casts hyperparameters to the first params leaf's dtype, so a
    # complex first leaf makes them complex scalars: a zero imaginary part is a real number.
    is_complex = jax.numpy.issubdtype(dtype, jax.numpy.complexfloating)
    if not (is_complex or jax.numpy.issubdtype(dtype, jax.numpy.floating)
            or jax.numpy.issubdtype(dtype, jax.numpy.integer)):
      raise TypeError(f"{name} must be {kind}, got an array of dtype {dtype}.")
    if tuple(value.shape) != ():
      raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}.")
    if _is_tracer(value):
      return None
    if is_complex:
      if complex(value).imag != 0:
        raise TypeError(f"{name} must be {kind}, got the complex value {complex(value)!r}.")
      return float(complex(value).real)
    return float(value)
  if isinstance(value, numbers.Real):
    try:
      return float(value)
    except OverflowError:  # an int beyond float64
      return math.inf if value > 0 else -math.inf
  raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")


def _is_jax_float(value: Any) -> bool:
  """Whether `value` is a jax array of a float (or complex) dtype."""
  return isinstance(value, jax.Array) and jax.numpy.issubdtype(value.dtype, jax.numpy.inexact)


def number(name: str, value: Any, allowed: Range = NON_NEGATIVE, *, plain: bool = False) -> Any:
  """Checks a float hyperparameter against `allowed`; returns its canonical value.

  Args:
    name: the argument's name (or config path), quoted in the message.
    value: a Python number, a numpy/jax scalar, or a traced scalar.
    allowed: the interval it must lie in.
    plain: return a Python float for every concrete value (configs); else
      concrete jax float arrays are returned as given (their dtype is the
      caller's choice) and everything else (Python and numpy ints and floats
      of every width, integer arrays) becomes a Python float.

  Returns:
    The value: a tracer or a jax float array unchanged, else a Python float.

  Raises:
    TypeError: not a number (bools and strings included).
    ValueError: NaN, infinite, or outside `allowed`.
  """
  x = _scalar_value(name, value, "a number")
  if x is None:
    return value  # traced: checked when concrete
  if not allowed.contains(x):
    why = f" ({allowed.why})" if allowed.why else ""
    raise ValueError(f"{name} must be a finite number in {allowed.text()}{why}; got {value!r}.")
  if plain or not _is_jax_float(value):
    # numpy scalars and integer arrays become floats: jax would wrap an int64 through
    # int32 (3e9 -> -1.3e9) and cannot hold an np.longdouble.
    return float(x)
  return value


def integer(name: str, value: Any, low: int, high: int = INT32_MAX) -> int:
  """Checks an int hyperparameter that sizes the computation (an int32 counter).

  Args:
    name: the argument's name.
    value: a Python int, numpy integer or concrete integer scalar array.
    low: the smallest allowed value.
    high: the largest (int32's maximum unless tighter).

  Returns:
    The value as a Python int.

  Raises:
    TypeError: not an int (bools, floats and traced values included).
    ValueError: outside [low, high].
  """
  if _is_tracer(value):
    raise TypeError(f"{name} must be a concrete int (it sizes the computation); got a traced "
                    "value. Under optax.inject_hyperparams pass it in static_args.")
  is_int_array = hasattr(value, "dtype") and np.issubdtype(np.dtype(value.dtype), np.integer)
  if isinstance(value, (bool, np.bool_)) or not (
      isinstance(value, numbers.Integral) or is_int_array):
    raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
  if tuple(getattr(value, "shape", ())) != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}.")
  i = int(value)
  if not low <= i <= high:
    raise ValueError(f"{name} must be an int in [{low}, {high}] (an int32 counter); got {i}.")
  return i


def optional_integer(name: str, value: Any, low: int, high: int = INT32_MAX) -> Optional[int]:
  """`integer`, or None for None."""
  return None if value is None else integer(name, value, low, high)


def boolean(name: str, value: Any) -> bool:
  """Checks a flag: a Python or numpy bool (not 0/1); returns a Python bool.

  Raises:
    TypeError: anything else.
  """
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__}).")
  return bool(value)


def decay_product(learning_rate: Any, weight_decay: Any, names=("learning_rate",
                                                                "weight_decay")) -> None:
  """Refuses a concrete ``learning_rate * weight_decay`` above `MAX_DECAY_PRODUCT`.

  Decoupled weight decay multiplies every parameter by ``1 - lr * wd`` each
  step; above 2 that factor's magnitude exceeds 1 and the params grow without
  bound. Traced values or a schedule are not checked.

  Raises:
    ValueError: the product exceeds 2.
  """
  lr, wd = concrete_float(learning_rate), concrete_float(weight_decay)
  if lr is None or wd is None or callable(learning_rate):
    return
  if lr * wd > MAX_DECAY_PRODUCT:
    raise ValueError(
        f"{names[0]} * {names[1]} = {_g(lr)} * {_g(wd)} = {_g(lr * wd)} must be <= "
        f"{_g(MAX_DECAY_PRODUCT)}: decoupled weight decay multiplies the params by "
        f"1 - {names[0]} * {names[1]} each step, which above 2 grows them without bound.")


def float_dtype(name: str, value: Any) -> Any:
  """Checks an optional floating dtype (e.g. ``mu_dtype``); returns it as a dtype or None.

  Args:
    name: the argument's name, quoted in the message.
    value: None, or anything `jax.numpy.dtype` accepts.

  Returns:
    The `numpy.dtype`, or None.

  Raises:
    TypeError: not a dtype (numbers and bools included).
    ValueError: a dtype that is not floating or complex (e.g. int32).
  """
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_, numbers.Number)):
    raise TypeError(f"{name} must be a floating dtype (e.g. jnp.bfloat16) or None, got "
                    f"{value!r}.")
  try:
    dtype = jax.numpy.dtype(value)
  except TypeError:
    raise TypeError(f"{name} must be a floating dtype (e.g. jnp.bfloat16) or None, got "
                    f"{value!r}.") from None
  if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
    raise ValueError(f"{name} must be a floating dtype, got {dtype}.")
  return dtype


def check_finite_scalar(where: str, value: Any) -> float:
  """A concrete size-1 array or number read from outside (a file, a peer) as a finite float.

  For state imported from peers (`optax_nadam.interop`), where a value is data,
  not a hyperparameter: any finite float64 is accepted.

  Args:
    where: the peer variable, quoted in the message.
    value: a number or an array with one element (numpy, jax, ...).

  Returns:
    The Python float.

  Raises:
    TypeError: not numeric (bools included).
    ValueError: more than one element, NaN or infinite.
  """
  a = np.asarray(value)
  if jax.dtypes.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.number):
    a = a.astype(np.float32)  # bfloat16 and numpy's other extension floats (ml_dtypes)
  if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
    raise TypeError(f"{where} has dtype {a.dtype}; expected a number.")
  if a.size != 1:
    raise ValueError(f"{where} has shape {a.shape}; expected a scalar.")
  x = float(a.reshape(()).real)
  if not math.isfinite(x):
    raise ValueError(f"{where} is {x}; expected a finite number.")
  return x
