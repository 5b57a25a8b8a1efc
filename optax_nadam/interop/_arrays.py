"""Values read from a peer as private numpy copies, validated (peer-neutral).

The torch front converts its tensors first (`optax_nadam.interop.torch`);
Keras values arrive as numpy already.
"""

from typing import Any

import numpy as np

from optax_nadam import _validation


def to_array(x: Any, where: str) -> np.ndarray:
  """A private numpy copy of an array or number (never a view of it).

  Args:
    x: a numpy array or scalar, or a Python int / float.
    where: how to name the value in an error message.

  Returns:
    A numpy array that shares no memory with `x`.

  Raises:
    TypeError: anything else (a string, a list, an object).
  """
  if isinstance(x, (np.ndarray, np.generic)):
    return np.array(x, copy=True)
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return np.array(x)
  raise TypeError(f"{where} is a {type(x).__name__}; expected a tensor, array or number.")


def to_scalar(x: Any, where: str) -> float:
  """A finite Python float from a one-element array or a number.

  Args:
    x: a numpy array / scalar or Python number with one element.
    where: how to name the value in an error message.

  Returns:
    The value as a float.

  Raises:
    TypeError: not an array or number.
    ValueError: more than one element, NaN or Inf.
  """
  return _validation.check_finite_scalar(where, to_array(x, where))
