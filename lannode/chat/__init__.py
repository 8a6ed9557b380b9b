"""Chat: 1:1 and group conversations between nodes.

* ``service``: the chat service (sending, receiving, receipts, catch-up, groups);
* ``methods``: the chat.* and group.* API;
* ``db``: chat.sqlite (schema, migrations, connections, group commit);
* ``outbox``: the outbox in memory, and the delivery task per recipient.

Messages and frames are ``lannode.core.chat``; groups as a fold, ``lannode.core.groups``.
"""
