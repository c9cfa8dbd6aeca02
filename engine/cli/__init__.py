"""Command-line front ends. One module per command group, each with ``register(subparsers)``."""
