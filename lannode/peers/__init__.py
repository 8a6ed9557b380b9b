"""Peers: who is on the network and how this node reaches them.

* ``service``: the peer service, which runs the membership on the gossip sockets,
  the peer links, zeroconf, and the membership's view exchanges;
* ``trust``: pinned keys (trust on first use), safety codes, verified peers.
"""
