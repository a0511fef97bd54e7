"""xdpsec: an IPsec gateway whose fast path is XDP and AF_XDP workers in Python."""

__version__ = "0.1.0"
