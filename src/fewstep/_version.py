"""The version of fewstep: the one place it is written (``pyproject.toml`` reads it from here, and so do
``fewstep.__version__`` and ``fewstep --version``)."""

VERSION = "0.1.0"
