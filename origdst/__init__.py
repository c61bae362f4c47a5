"""
origdst: a transparent forward HTTP proxy to the original destination of
redirected connections.
"""

# pyproject.toml reads the version from this line.
__version__ = "0.1.0"
