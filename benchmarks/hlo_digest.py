"""Digests of the lowered update of float32, bfloat16, float16 and mixed trees.

    python -m benchmarks.hlo_digest > new.txt   # in this checkout
    (cd OTHER_CHECKOUT && python -m benchmarks.hlo_digest) > old.txt
    diff old.txt new.txt                         # empty: same program, same speed

One line per (tree, optimizer): the sha256 of
``jax.jit(tx.update).lower(grads, state, params).as_text()`` with the module's
name (taken from the Python function's name) replaced by ``@jit``. Identical text
means XLA compiles the same program, which says more than a timing on a noisy
machine: a change that must not touch the 32-bit path (e.g. the float64 dtype
policy) is checked by an empty diff. Run with x64 off (the default).
"""

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_nadam
import optax_nadam.keras


def _trees():
  rng = np.random.default_rng(0)

  def tree(dtype):
    return {"a": jnp.asarray(rng.normal(size=(7, 3)), dtype),
            "b": jnp.asarray(rng.normal(size=(11,)), dtype),
            "c": jnp.asarray(rng.normal(size=()), dtype)}

  yield "float32", tree(jnp.float32)
  yield "bfloat16", tree(jnp.bfloat16)
  yield "float16", tree(jnp.float16)
  yield "mixed", {"a": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=(11,)), jnp.bfloat16),
                  "c": jnp.asarray(rng.normal(size=(5,)), jnp.float16),
                  "d": jnp.asarray(rng.normal(size=(3,)) + 1j * rng.normal(size=(3,)),
                                   jnp.complex64)}


def _optimizers(tree_name):
  yield "nadam", optax_nadam.nadam(1e-2)
  yield "nadam eps_root", optax_nadam.nadam(1e-2, eps=0.0, eps_root=1e-8)
  yield "nadam eps=0", optax_nadam.nadam(1e-2, eps=0.0)
  if tree_name != "mixed":  # a bfloat16 m for a complex64 leaf is refused
    yield "nadam mu_dtype=bf16", optax_nadam.nadam(
        1e-2, b1=0.8, b2=0.99, momentum_decay=1.0, mu_dtype=jnp.bfloat16)
  if tree_name != "bfloat16":  # inject_hyperparams rounds b2=0.999 to bf16 1.0
    yield "inject_hyperparams", optax.inject_hyperparams(optax_nadam.nadam)(
        learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-7, momentum_decay=0.004)
  yield "nadamw", optax_nadam.nadamw(1e-2)
  yield "grouped", optax_nadam.grouped(optax_nadam.nadam(1e-2))
  yield "keras.Nadam", optax_nadam.keras.Nadam(learning_rate=1e-2)


def main():
  for tree_name, params in _trees():
    grads = jax.tree.map(lambda x: (x * 0.5 + 0.1).astype(x.dtype), params)
    for tx_name, tx in _optimizers(tree_name):
      text = jax.jit(tx.update).lower(grads, tx.init(params), params).as_text()
      text = re.sub(r"^module @\S+", "module @jit", text)  # a renamed function is the same program
      print(f"{tree_name:9s} {tx_name:20s} {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
  main()
