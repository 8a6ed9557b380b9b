"""Sans-IO protocol logic: plain objects fed events and ``now``.

Nothing in this package may open a socket, read the clock or import trio.
"""
