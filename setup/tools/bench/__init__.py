"""CPU inference benchmark: ``python -m setup.tools.bench`` (``make bench``); see ``__main__``."""
