"""`python -m optax_nadam`: the demo (`optax_nadam._demo`); needs the `demo` extra."""

import sys

from optax_nadam._demo.cli import main

if __name__ == "__main__":
  sys.exit(main())
