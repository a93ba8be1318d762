"""inspector: automatic quality control of X-ray images of fuel-cell electrodes."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it ([tool.setuptools.dynamic])
