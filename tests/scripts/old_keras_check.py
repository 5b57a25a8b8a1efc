"""Continues the runs `old_keras_writer.py` saved, and prints each gap after 20 steps.

Usage: ``old_keras_check.py DIR`` (run from the checkout, with ``PYTHONPATH=$PWD``).
For each ``<name>.keras`` in DIR: ``resume_from_keras``, 20 updates on the
writer's batch, and the gap max |ours - theirs| / max |theirs| against
``<name>_after.npz``, or the refusal's message. Prints ``RESULT {json}``
with the Keras version the files name and the gaps.
"""

import json
import os
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_nadam.interop import resume_from_keras

STEPS = 20


def _loss(params, x, y):
  w1, b1, w2, b2 = params
  return jnp.mean((jnp.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)


def gap(path: str, after: str, x, y) -> float:
  z = np.load(after)
  theirs = [z[f"w{i}"] for i in range(len(z.files))]
  params, tx, state = resume_from_keras(path, [jnp.zeros(t.shape, jnp.float32) for t in theirs])

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(STEPS):
    params, state = step(params, state)
  scale = max(float(np.max(np.abs(t))) for t in theirs)
  return max(float(np.max(np.abs(np.asarray(p) - t))) for p, t in zip(params, theirs)) / scale


def main():
  out = sys.argv[1]
  data = np.load(os.path.join(out, "data.npz"))
  x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
  gaps, version = {}, None
  for name in sorted(os.listdir(out)):
    if name.endswith(".keras"):
      path = os.path.join(out, name)
      with zipfile.ZipFile(path) as zf:
        version = json.loads(zf.read("metadata.json")).get("keras_version")
      try:
        gaps[name] = gap(path, os.path.join(out, name[:-len(".keras")] + "_after.npz"), x, y)
      except ValueError as e:  # a refusal: its message is the result
        gaps[name] = f"refused: {e}"
  print("RESULT " + json.dumps({"keras_version": version, "gaps": gaps}))


if __name__ == "__main__":
  main()
