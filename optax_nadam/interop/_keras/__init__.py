"""Private pieces of `optax_nadam.interop.keras`: live optimizers, configs, file state."""
