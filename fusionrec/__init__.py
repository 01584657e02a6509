"""fusionrec: recommenders built by fusing several pretrained language models."""

__version__ = "0.1.0"
