"""lannode: a communication suite for a local network that needs no server.

The package is the daemon and its library; ``lannode.cli`` is the command.
Nothing here is imported eagerly: the daemon pays only for what it uses.
"""

__version__ = "0.1.0"
