"""The demo behind `python -m optax_nadam` (private).

- `cli`: the command line (flags, their checks, the printed report).
- `train`: a Flax NNX MLP on scikit-learn's digits, trained with each optimizer.
- `report`: the table, the loss-curve plot and where it goes, the machine line.

It times its steps with `optax_nadam._timing`, the protocol ``benchmarks/``
uses too. Nothing here is imported by ``import optax_nadam``.
"""
