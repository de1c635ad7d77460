"""The offline unlearning demo that `make demo` runs: its data and its comparison."""
