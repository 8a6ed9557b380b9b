"""File drop: offers, decisions, resumable transfers between two nodes.

* ``offers``: the sender's files read and hashed into an offer; a received offer
  checked against the downloads folder;
* ``stream``: the bulk connection's two ends for files, as blocking code for worker
  threads;
* ``service``: the transfer service (the link channel, resume, progress, the API).

The sans-IO parts (safe names, the offer, chunk hashes, records) are
``lannode.core.transfer``; bulk connections themselves, ``lannode.core.bulk`` and
``lannode.net.bulk``.
"""
