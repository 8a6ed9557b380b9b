"""trio I/O: the local API server and client (and, later, gossip and peer links)."""
