"""stepplan: a self-hostable Step Plan gateway."""

__version__ = "0.1.0"
