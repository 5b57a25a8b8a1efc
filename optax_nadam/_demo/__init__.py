"""The demo behind `python -m optax_nadam` (private), and the timing protocol it shares.

- `cli`: the command line (flags, their checks, the printed report).
- `train`: a Flax NNX MLP on scikit-learn's digits, trained with each optimizer.
- `report`: the table, the loss-curve plot and where it goes, the machine line.
- `timing`: contestants interleaved step by step in balanced orders; also used
  by ``benchmarks/``, so the demo and the benchmarks time steps one way.

Only `timing` runs without the `demo` extra; nothing here is imported by
``import optax_nadam``.
"""
