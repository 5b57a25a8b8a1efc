"""The one converter of peer values to numpy: private copies, validated (peer-neutral)."""

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_nadam import _validation


def is_tensor(x: Any) -> bool:
  """True for a `torch.Tensor` (without importing torch when it is not loaded)."""
  torch = sys.modules.get("torch")
  return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any, where: str = "the value") -> np.ndarray:
  """A private numpy copy (never a view) of a tensor, array or number.

  bfloat16 becomes float32: numpy has no bfloat16 of its own, and every
  consumer casts to the params' dtype afterwards.

  Args:
    x: a `torch.Tensor` (any device), a jax or numpy array or scalar, or a
      Python int / float.
    where: how to name the value in an error message.

  Returns:
    A numpy array that shares no memory with `x`.

  Raises:
    TypeError: anything else (a string, a list, an object).
    ValueError: a complex tensor (torch's NAdam treats its parts separately).
  """
  if is_tensor(x):
    import torch

    t = x.detach().to("cpu")
    if t.is_complex():
      raise ValueError(
          f"{where} is complex; torch NAdam treats real and imaginary parts as "
          "separate coordinates, which is not this optimizer's complex rule.")
    x = t.to(torch.float32) if t.dtype == torch.bfloat16 else t
    return np.array(x.numpy(), copy=True)  # .numpy() shares memory with the tensor
  if isinstance(x, (np.ndarray, np.generic, jax.Array)):
    out = np.array(x, copy=True)
    return out.astype(np.float32) if out.dtype == jnp.bfloat16 else out
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return np.array(x)
  raise TypeError(f"{where} is a {type(x).__name__}; expected a tensor, array or number.")


def to_scalar(x: Any, where: str) -> float:
  """A finite Python float from a one-element tensor, array or number.

  Raises:
    TypeError: not a tensor, array or number.
    ValueError: more than one element, NaN or Inf.
  """
  return _validation.check_finite_scalar(where, to_numpy(x, where))
