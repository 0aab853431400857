"""Rosetta Transformer's accelerated backends: ``accelerated.torch`` (PyTorch) and ``accelerated.cupy`` (CuPy)."""
