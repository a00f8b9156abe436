"""resnetlab: the system of "Deep Residual Learning for Image Recognition" (He et al., 2015)."""

__version__ = "0.1.0"
