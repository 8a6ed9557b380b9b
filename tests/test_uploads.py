"""Files a page hands to its node (lannode.uploads): resumable, in order, and nothing
a page sends can write outside the node's uploads folder or name a path on the machine."""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import NodeFactory, RunningNode
from lannode.core.api import origin_token
from lannode.net.api_client import ApiClient, RemoteError, connect, open_client
from lannode.net.api_server import EventBus
from lannode.uploads import Upload, UploadService


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
        assert record["name"] == "sub/dir/ok.txt"  # a folder's file keeps its place in it
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

    async def someone_else(client: ApiClient) -> None:
        upload = (await client.call("upload.begin", name="mine.txt", size=4))["upload"]

        async with connect(node.home) as local:  # a local program: not the page that began it
            await local.subscribe("upload.*")
            await local.send_binary(piece(upload, 0, b"evil"))
            assert "someone else" in (await next_event(local, "upload.error"))["error"]

    trio.run(as_page, page, someone_else)
    assert not (node.home.path.parent / "escape.txt").exists()
    assert node.status()["uploads"]["refused"] >= 3 and node.status()["node_id"]


def http(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=body if method == "PUT" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def test_a_page_puts_an_upload_over_http_with_its_origin_token_only(nodes: NodeFactory) -> None:
    node = nodes.start("ann", webui=True)
    page = page_of(node)
    url, token, origin = page
    data = b"x" * 3_000_000

    async def begin(client: ApiClient) -> str:
        upload: str = (await client.call("upload.begin", name="film.bin", size=len(data)))["upload"]
        return upload

    upload = trio.run(as_page, page, begin)
    target = url.replace("ws://", "http://") + f"/uploads/{upload}"
    # the browser's preflight: answered for the UI's origin only
    status, headers, _ = http("OPTIONS", target, {"Origin": origin, "Access-Control-Request-Method": "PUT"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == origin and "x-lannode-offset" in headers["Access-Control-Allow-Headers"]
    assert http("OPTIONS", target, {"Origin": "http://evil.example"})[0] == 403
    # no token, a wrong one, another origin's: refused
    assert http("PUT", target, {"Origin": origin}, data[:10])[0] == 401
    assert http("PUT", target, {"Origin": origin, "Authorization": "Bearer nope"}, data[:10])[0] == 401
    assert http("PUT", target, {"Origin": "http://evil.example", "Authorization": f"Bearer {token}"}, data[:10])[0] == 403
    # half, then the rest from where the node says it is; a wrong offset or too much is refused
    auth = {"Origin": origin, "Authorization": f"Bearer {token}"}
    status, headers, record = http("PUT", target, {**auth, "X-Lannode-Offset": "0"}, data[:1_000_000])
    assert status == 200 and record["offset"] == 1_000_000 and headers["Access-Control-Allow-Origin"] == origin
    status, _, refused = http("PUT", target, {**auth, "X-Lannode-Offset": "5"}, data[5:10])
    assert status == 400 and "1000000" in refused["error"]
    assert http("PUT", target, {**auth, "X-Lannode-Offset": "1000000"}, data[1_000_000:] + b"extra")[0] == 400
    status, _, record = http("PUT", target, {**auth, "X-Lannode-Offset": str(record["offset"])}, data[record["offset"]:])
    assert status == 200 and record["complete"] is True
    assert http("PUT", url.replace("ws://", "http://") + "/uploads/" + "0" * 32, auth, b"x")[0] == 404
    assert list((node.home.path / "uploads").glob("*/data/film.bin"))[0].read_bytes() == data
    assert node.status()["node_id"]


def test_a_stale_upload_is_removed_unless_a_transfer_still_sends_it(tmp_path: Path) -> None:
    service = UploadService(tmp_path, EventBus())
    service.root.mkdir()

    async def begin_two() -> tuple[Upload, Upload]:
        return await service.begin("kept.txt", 1, "", None), await service.begin("old.txt", 1, "", None)

    kept, old = trio.run(begin_two)
    service.in_use = lambda path: path == kept.path
    service._remove_stale(now=time.time() + 2 * 86400)
    assert kept.id in service.uploads and kept.path.exists()
    assert old.id not in service.uploads and not (service.root / old.id).exists()
