"""zerogate: self-hosted zero-trust network access."""

__version__ = "0.1.0"
