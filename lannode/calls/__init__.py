"""Calls without a browser: this node as a WebRTC participant, through aiortc.

A box by the door, a meeting-room computer, a recorder: ``lannode call`` and the
``answer`` plugin take part in calls as a *front* of their node, exactly as a
browser tab of the web UI does (``lannode/rtc.py`` carries the signaling; the
page's protocol is in ``ui/rtc.js`` and ``ui/calls.js``), so pages call them like
anyone else.

- ``bridge``: the one crossing between trio and asyncio (aiortc's loop runs in a
  thread of its own). Imports neither aiortc nor av.
- ``events``: what the engine reports across the bridge (no aiortc).
- ``engine``: the peer connections, on the asyncio side: perfect negotiation, the
  data channel, tracks in and out. Imports aiortc.
- ``media``: what is sent (a test pattern, a file, a camera) and the recorder.
  Imports aiortc and av.
- ``participant``: the trio side: the API connection, the page's call protocol
  (ringing, rooms), and what the CLI and the plugin show.

This package must never be imported by the daemon: a node that never calls pays
neither aiortc's import time nor its memory, and FFmpeg's decoders, fed by other
machines, never run inside the process that holds the node's keys.
"""
