"""The package version (submodules import it from here, never from ``hf_qat``)."""

__version__ = "0.1.0"
