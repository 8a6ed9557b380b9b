"""The drive: files encrypted, erasure-coded and spread over the members' machines.

* ``service``: the drive service (put, get, share, verify, repair);
* ``requests``: link channel 6, a holder's answers and bulk grants;
* ``methods``: the ``drive.*`` API;
* ``fragment_io``: the byte work, as blocking code for worker threads (a put's
  fragments to their holders, a holder storing and serving one, a get from any k);
* ``fragments``: the fragments this node holds, on disk.

The sans-IO parts (layouts, manifests, capabilities, block hashes) are
``lannode.core.drive``; the erasure code is ``lannode.core.erasure``.
"""
