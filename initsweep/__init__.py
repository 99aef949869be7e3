"""initsweep: what weight initialization and activation choice do to a network as it deepens."""

__version__ = "0.1.0"
