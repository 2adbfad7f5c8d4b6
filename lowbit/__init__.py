"""lowbit: 1-2-bit image classifiers for edge accelerators, verified bit-exact."""

__version__ = "0.1.0"
