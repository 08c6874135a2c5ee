"""jaxmlc: multi-label classification with scarce labels, in JAX/Flax."""
__version__ = "0.1.0"
