"""The local API: what it answers, and every way it refuses bad input without falling over."""

from __future__ import annotations

import json
import random
from typing import Any, Awaitable, Callable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from conftest import NodeFactory, RunningNode
from lannode.core import api
from lannode.net.api_client import ApiRejected, RemoteError, open_client


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


@pytest.fixture(scope="module")
def node(module_nodes: NodeFactory) -> RunningNode:
    node = module_nodes.start("api", webui=True)
    node.wait_until(lambda: node.plugin("webui").get("url"), what="the web UI to register")
    return node


def ui_origin(node: RunningNode) -> str:
    return node.plugin("webui")["url"].rstrip("/")


def rejection(node: RunningNode, **kwargs: Any) -> ApiRejected:
    info = node.api()
    url = kwargs.pop("url", info["url"])
    token = kwargs.pop("token", info["token"])

    async def attempt() -> None:
        async with open_client(url, token, **kwargs):
            pass

    with pytest.raises(ApiRejected) as caught:
        run(attempt)
    return caught.value


async def raw_exchange(node: RunningNode, frames: list[str | bytes]) -> list[dict[str, Any]]:
    """Send frames as they are and collect one answer per frame."""
    info = node.api()
    headers = [(b"authorization", f"Bearer {info['token']}".encode())]
    answers = []
    async with open_websocket_url(info["url"], extra_headers=headers) as ws:
        hello = json.loads(await ws.get_message())
        assert hello["event"] == "hello"
        for frame in frames:
            await ws.send_message(frame)
            answers.append(json.loads(await ws.get_message()))
    return answers


def test_hello_then_status_over_the_api(node: RunningNode) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with open_client(node.api()["url"], node.api()["token"]) as client:
            return client.hello, await client.call("node.status")

    hello, status = run(go)
    assert hello["api"] == api.API_VERSION
    assert hello["node_id"] == status["node_id"]
    assert set(status) >= {"node_id", "name", "version", "api_version", "pid", "uptime_s", "interface", "home", "plugins"}


def test_a_missing_token_is_refused(node: RunningNode) -> None:
    refused = rejection(node, token="")
    assert refused.status == 401 and "missing token" in refused.reason


def test_a_wrong_token_is_refused(node: RunningNode) -> None:
    refused = rejection(node, token="0" * 64)
    assert refused.status == 401 and "wrong token" in refused.reason


def test_an_unknown_api_version_is_refused(node: RunningNode) -> None:
    refused = rejection(node, url=node.api()["url"].replace("/v1", "/v9"))
    assert refused.status == 404 and "/v1" in refused.reason


def test_a_browser_origin_other_than_the_web_ui_is_refused(node: RunningNode) -> None:
    evil = "http://evil.example"
    refused = rejection(node, token=api.origin_token(node.api()["token"], evil), origin=evil, subprotocol_token=True)
    assert refused.status == 403 and "not this node's web UI" in refused.reason


def test_the_web_ui_origin_needs_its_own_token_not_the_node_token(node: RunningNode) -> None:
    refused = rejection(node, origin=ui_origin(node), subprotocol_token=True)
    assert refused.status == 401 and "for this origin" in refused.reason


def test_a_token_for_one_ui_origin_does_not_open_another(node: RunningNode) -> None:
    origin = ui_origin(node)
    other = origin.replace("127.0.0.1", "localhost")
    refused = rejection(node, token=api.origin_token(node.api()["token"], origin), origin=other, subprotocol_token=True)
    assert refused.status == 401


def test_the_web_ui_origin_with_its_token_gets_in_but_not_to_local_methods(node: RunningNode) -> None:
    origin = ui_origin(node)
    node_id = node.status()["node_id"]

    async def go() -> None:
        async with open_client(node.api()["url"], api.origin_token(node.api()["token"], origin), origin=origin, subprotocol_token=True) as client:
            assert (await client.call("node.status"))["node_id"] == node_id
            with pytest.raises(RemoteError) as caught:
                await client.call("node.stop")
            assert caught.value.code == api.ErrorCode.FORBIDDEN

    run(go)
    assert node.process.poll() is None


def test_malformed_requests_get_clear_errors(node: RunningNode) -> None:
    frames: list[str | bytes] = [
        "{not json",
        "[1, 2, 3]",
        b"\x00\x01binary",
        '{"method": "node.status"}',
        '{"id": true, "method": "node.status"}',
        '{"id": 1}',
        '{"id": 2, "method": "node.status", "params": [1]}',
        '{"id": 3, "method": "node.status", "extra": 1}',
        '{"id": 4, "method": "no.such.method"}',
        '{"id": 5, "method": "events.subscribe", "params": {"topics": "plugin.*"}}',
        '{"id": 6, "method": "plugin.register", "params": {"name": "webui"}}',
        '{"id": 7, "method": "plugin.register", "params": {"name": "webui", "url": "x", "origins": ["http://evil.example:80"]}}',
        r'{"id": 9, "method": "\ud800 lone surrogate"}',
        '{"id": 8, "method": "node.status"}',
    ]
    answers = run(lambda: raw_exchange(node, frames))
    codes = [a.get("error", {}).get("code") for a in answers]
    # a binary message is a piece of an upload: this one is refused with an event saying why
    assert answers[2]["event"] == "upload.error" and "shorter than its header" in answers[2]["data"]["error"]
    assert codes == [
        "bad_json",
        "bad_json",
        None,
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "unknown_method",
        "bad_params",
        "bad_params",
        "bad_params",
        "unknown_method",
        None,
    ]
    assert all(a["error"]["message"] for i, a in enumerate(answers[:-1]) if i != 2)
    assert answers[8]["id"] == 4 and "api.methods" in answers[8]["error"]["message"]
    assert answers[-1]["result"]["node_id"]


def test_a_frame_over_the_size_limit_closes_the_connection_with_1009(node: RunningNode) -> None:
    async def go() -> int:
        info = node.api()
        headers = [(b"authorization", f"Bearer {info['token']}".encode())]
        async with open_websocket_url(info["url"], extra_headers=headers) as ws:
            await ws.get_message()
            with pytest.raises(ConnectionClosed) as caught:
                # the node closes as soon as the frame's header says it is too big: often
                # while the client is still sending it
                await ws.send_message(json.dumps({"id": 1, "method": "node.status", "params": {"pad": "x" * (1 << 20)}}))
                await ws.get_message()
            return caught.value.reason.code

    assert run(go) == 1009
    assert node.status()["api"]["bad_messages"]["oversized"] >= 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_the_request_parser_turns_any_text_into_a_request_or_an_api_error(frame: str) -> None:
    try:
        request = api.parse_request(frame)
    except api.ApiError as exc:
        assert exc.code in api.ALL_ERROR_CODES and exc.message
    else:
        assert isinstance(request.method, str) and isinstance(request.params, dict)


def test_random_frames_never_take_the_server_down(node: RunningNode) -> None:
    rng = random.Random(20261124)
    pieces = ['{', '}', '[', ']', '"id"', '"method"', '"params"', ':', ',', '1', 'null', '"node.status"', '\\u0000', "é", r'"\ud800"', r'{"id": 9, "method": "\ud800"}']
    frames = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(60)]
    frames += ["".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    frames += ['{"id": 1, "method": "node.status", "params": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"]
    answers = run(lambda: raw_exchange(node, frames))
    assert len(answers) == len(frames)
    assert all("error" in a or "result" in a for a in answers)
    assert node.status()["node_id"]


def test_api_methods_lists_documented_methods(node: RunningNode) -> None:
    methods = {m["method"]: m for m in node.call("api.methods")}
    assert {"node.status", "node.stop", "plugin.register", "events.subscribe", "events.unsubscribe", "api.methods"} <= set(methods)
    assert all(m["doc"] for m in methods.values())
    assert methods["node.stop"]["local_only"] is True


def test_refusals_are_counted_and_the_node_keeps_serving(node: RunningNode) -> None:
    before = node.status()["api"]["rejected"]
    rejection(node, token="")
    rejection(node, origin="http://evil.example", subprotocol_token=True)
    after = node.status()["api"]["rejected"]
    assert after.get("401", 0) == before.get("401", 0) + 1
    assert after.get("403", 0) == before.get("403", 0) + 1
    assert node.process.poll() is None
