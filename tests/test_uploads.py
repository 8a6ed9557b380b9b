"""Files a page hands to its node (lannode.uploads): resumable, in order, and nothing
a page sends can write outside the node's uploads folder or name a path on the machine."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import trio

from lannode.core.api import origin_token
from lannode.net.api_client import ApiClient, RemoteError, open_client

from conftest import NodeFactory, RunningNode


def piece(upload: str, offset: int, data: bytes) -> bytes:
    return bytes.fromhex(upload) + struct.pack("!Q", offset) + data


def page_of(node: RunningNode) -> tuple[str, str, str]:
    """What the web UI's page presents: the API URL, its origin token, its origin."""
    origin: str = node.wait_until(lambda: node.plugin("webui").get("url"), what="the web UI").rstrip("/")
    info = node.api()
    return info["url"], origin_token(info["token"], origin), origin


async def as_page(page: tuple[str, str, str], body: Any) -> Any:
    """Run ``body(client)`` on an API connection such as the page opens."""
    url, token, origin = page
    async with open_client(url, token, origin=origin, subprotocol_token=True) as client:
        return await body(client)


async def next_event(client: ApiClient, topic: str) -> Any:
    with trio.fail_after(10):
        async for got, data in client.events():
            if got == topic:
                return data


def test_an_upload_resumes_where_the_node_copy_ends_and_refuses_what_does_not_fit(nodes: NodeFactory) -> None:
    node = nodes.start("ann", webui=True)
    page = page_of(node)
    data = bytes(range(256)) * 4096  # 1 MiB

    async def first(client: ApiClient) -> str:
        record = await client.call("upload.begin", name="notes.txt", size=len(data))
        assert record["offset"] == 0 and not record["complete"]
        await client.send_binary(piece(record["upload"], 0, data[:300_000]))
        await client.send_binary(piece(record["upload"], 999, b"out of order"))
        error = await next_event(client, "upload.error")
        assert "300000" in error["error"]
        upload: str = record["upload"]
        return upload

    upload = trio.run(as_page, page, first)

    async def again(client: ApiClient) -> None:  # the page reloaded: a new connection resumes
        record = await client.call("upload.begin", name="notes.txt", size=len(data), resume=upload)
        assert record == {"upload": upload, "name": "notes.txt", "size": len(data), "offset": 300_000, "complete": False}
        with pytest.raises(RemoteError, match="send the rest first"):
            await client.call("transfer.send", peer="nobody", uploads=[upload])
        await client.send_binary(piece(upload, 300_000, data[300_000:] + b"one byte too many"))
        assert "has 300000" in (await next_event(client, "upload.error"))["error"]
        await client.send_binary(piece(upload, 300_000, data[300_000:]))
        assert (await next_event(client, "upload.progress"))["complete"] is True

    trio.run(as_page, page, again)
    stored = list((node.home.path / "uploads").glob("*/data/notes.txt"))
    assert len(stored) == 1 and stored[0].read_bytes() == data


def test_a_page_cannot_name_paths_or_write_outside_the_uploads_folder(nodes: NodeFactory, tmp_path: Path) -> None:
    node = nodes.start("ann", webui=True)
    page = page_of(node)

    async def hostile(client: ApiClient) -> None:
        for name in ("../../escape.txt", "/etc/passwd", "a/../../b", "", "con\x00sole"):
            with pytest.raises(RemoteError, match="file name"):
                await client.call("upload.begin", name=name, size=10)
        record = await client.call("upload.begin", name="sub/dir/ok.txt", size=4)
        assert record["name"] == "ok.txt"
        with pytest.raises(RemoteError) as refused:
            await client.call("transfer.send", peer="ann", paths=[str(tmp_path)])
        assert refused.value.code == "forbidden"
        for method, params in (("drive.put", {"path": str(tmp_path)}), ("drive.get", {"file": "x", "out": str(tmp_path / "y")})):
            with pytest.raises(RemoteError) as refused:
                await client.call(method, **params)
            assert refused.value.code == "forbidden", method
        await client.send_binary(b"short")
        assert "shorter than its header" in (await next_event(client, "upload.error"))["error"]
        await client.send_binary(piece("00" * 16, 0, b"abcd"))
        assert "no such upload" in (await next_event(client, "upload.error"))["error"]
        return None

    trio.run(as_page, page, hostile)

    async def other_connection(client: ApiClient) -> None:
        upload = (await client.call("upload.begin", name="mine.txt", size=4))["upload"]

        async def thief(other: ApiClient) -> None:
            await other.send_binary(piece(upload, 0, b"evil"))
            assert "another connection" in (await next_event(other, "upload.error"))["error"]

        await as_page(page, thief)

    trio.run(as_page, page, other_connection)
    assert not (node.home.path.parent / "escape.txt").exists()
    assert node.status()["uploads"]["refused"] >= 3 and node.status()["node_id"]
