"""faceverify service: decode, detect, align and embed faces, then verify and identify them."""

__version__ = "0.1.0"
