"""CPU inference benchmark: ``python -m inference.bench`` (``make bench``); see ``__main__``."""
