"""astrogan: colorize and 4x super-resolve Hubble images with GANs, reproducibly (DVC)."""

__version__ = "0.1.0"
