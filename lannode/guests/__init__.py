"""Guests: browsers on the LAN (phones, most often) that take part through a node.

* ``tls``: the guest door's certificate, made and kept in the home;
* ``http``: a small HTTPS/1.1 server on trio (keep-alive, server-sent events);
* ``service``: the door itself: invitations, sign-in, sessions, the guest API, and
  the guests announced to the network;
* ``routes``: links to and from guests, carried over their hosts' links.

The sans-IO parts (invites, the guest's signed record, signed requests) are
``lannode.core.guests``.
"""
