"""Debian's Chromium as the tests and benchmarks launch it (through Playwright, never a
downloaded browser): the flags a headless machine with only loopback needs."""

from __future__ import annotations

import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def playwright_disabled_features() -> list[str]:
    """The features Playwright disables itself: Chromium honours only the last
    --disable-features switch, so ours must carry Playwright's list too."""
    import playwright

    bundle = Path(playwright.__file__).parent / "driver" / "package" / "lib" / "coreBundle.js"
    text = bundle.read_text(errors="replace") if bundle.exists() else ""
    block = re.search(r"disabledFeatures = \[(.*?)\]", text, re.S)
    return re.findall(r'"([A-Za-z0-9]+)"', block.group(1)) if block else []


def chromium_args() -> list[str]:
    return [
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # this machine has no network; don't try
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",  # a test pattern and a beep for camera and microphone
        "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection",  # ICE candidates on 127.0.0.1: this host has only lo
        "--disable-features=" + ",".join(["WebRtcHideLocalIpsWithMdns", *playwright_disabled_features()]),
    ]
