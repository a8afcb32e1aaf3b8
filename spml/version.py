"""The code version: written into every checkpoint's ``config.json`` (``training.code_version``)."""

__version__ = "0.1.0"
