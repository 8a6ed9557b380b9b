"""Calls with a node that has no browser (aiortc), against real pages in Chromium.

aioice offers no loopback candidates, so these run in the network lab
(``sim/netlab.py``): three hosts in network namespaces on one bridge, 10.77.0.1-3.
h1 is the node without a screen (``lannode call``, the ``answer`` plugin); h2 and
h3 each run a daemon with its web UI and a Chromium of their own, started inside
the host's namespace. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from conftest import NodeFactory, run_cli, wait_decoding, write_config
from lannode.config import render_default
from lannode.home import Home
from sim.browser import chromium_args
from sim.netlab import NetLab


def answering_config(name: str, record: Path) -> str:
    """The default config with the answer plugin on: h2's calls are answered once verified."""
    text = render_default(name).replace("[plugins.webui]\nenabled = true", "[plugins.webui]\nenabled = false")
    old = '[plugins.answer]\nenabled = false\npeers = []\nsource = "test-pattern"\nrecord = ""'
    assert old in text
    return text.replace(old, f'[plugins.answer]\nenabled = true\npeers = ["h2"]\nsource = "test-pattern"\nrecord = "{record}"')


class World:
    def __init__(self, lab: NetLab, browsers: dict[int, Browser], directory: Path) -> None:
        self.lab = lab
        self.browsers = browsers
        self.directory = directory
        self.ids = {host: lab.node_id(host) for host in (1, 2, 3)}

    def page(self, host: int, hash: str = "") -> Page:
        url = self.lab.call(host, "node.status")["plugins"]
        url = next(p["url"] for p in url if p["name"] == "webui")
        page = self.browsers[host].new_page(viewport={"width": 1100, "height": 800})
        page.goto(url + hash)
        page.wait_for_selector("#connection[data-state=up]", timeout=15000)
        page.wait_for_function("() => document.documentElement.dataset.front", timeout=10000)
        return page

    def lannode(self, host: int, *args: str) -> subprocess.Popen[str]:
        """The CLI, run inside a host against its node."""
        home = self.directory / f"h{host}"
        command = [*self.lab.enter(host), sys.executable, "-m", "lannode", *args, "--home", str(home)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("lab")
    recordings = directory / "answered"
    with NetLab(hosts=3, directory=directory) as lab:
        (directory / "h1").mkdir()
        (directory / "h1" / "config.toml").write_text(answering_config("h1", recordings))
        lab.start(1)
        lab.start(2, webui=True)
        lab.start(3, webui=True)
        lab.wait_until(lambda: all(sum(s == "alive" for s in lab.peers(h).values()) == 2 for h in (1, 2, 3)), 30, "all three hosts alive")
        with sync_playwright() as p:
            browsers = {host: p.chromium.launch(executable_path=str(lab.wrapper(host, "/usr/bin/chromium", directory / f"chromium-h{host}")), args=chromium_args()) for host in (2, 3)}
            try:
                yield World(lab, browsers, directory)
            finally:
                for b in browsers.values():
                    b.close()


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def summary_of(out: str) -> dict[str, Any]:
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary: dict[str, Any] = next(e["data"] for e in events if e["event"] == "call.summary")
    return summary


def probe(path: Path) -> dict[str, Any]:
    """What a recording holds, read back with PyAV: decoded frames, seconds, picture size."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        frames, last, size, colour = 0, Fraction(0), (0, 0), (0.0, 0.0, 0.0)
        for frame in container.decode(video):
            frames += 1
            size = (frame.width, frame.height)
            if frames == 10:
                r, g, b = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
                colour = (float(r), float(g), float(b))
            if frame.pts is not None and frame.time_base is not None:
                last = max(last, frame.pts * frame.time_base)
        return {"frames": frames, "seconds": float(last), "size": size, "audio": len(audio), "codec": video.codec_context.name, "rgb": colour}


def chromium_green(rgb: tuple[float, float, float]) -> bool:
    """Chromium's fake camera is a green field (with a pacman and a clock); the node's own
    test pattern is colour bars, which average grey."""
    r, g, b = rgb
    return g > r + 60 and g > b + 60


def test_a_page_takes_a_call_from_lannode_call_and_each_side_gets_the_others_video(world: World) -> None:
    page = world.page(2)
    out_file = world.directory / "call.webm"
    call = world.lannode(1, "call", "h2", "--test-pattern", "--record", str(out_file), "--duration", "8", "--json")
    page.wait_for_selector("#incoming:not([hidden]) #accept-call", timeout=30000)
    assert "h1 is calling" in page.text_content("#incoming")  # type: ignore[operator]
    page.click("#accept-call")
    decoded = wait_decoding(page, 1)
    code, out, err = finish(call)
    assert code == 0, err
    summary = summary_of(out)
    assert summary["outcome"] == "ended" and summary["reason"] == "the time was up"
    assert summary["frames_sent"]["video"] > 0
    (front,) = summary["participants"]
    assert summary["frames_received"][front]["video"] > 0 and summary["frames_received"][front]["audio"] > 0
    assert summary["recordings"] == [str(out_file)]
    # the page saw the node's frames, and the node's hang-up ended the call on the page
    assert list(decoded.values())[0] > 0
    page.wait_for_selector("#call", state="hidden", timeout=10000)
    # the recording holds the page's camera: Chromium's fake 640x480 device, VP8 and Opus in WebM
    held = probe(out_file)
    assert held["codec"] == "vp8" and held["audio"] == 1
    assert held["frames"] >= 30, held
    assert 1.0 <= held["seconds"] <= 9.0, held
    assert abs(held["size"][0] / held["size"][1] - 4 / 3) < 0.02, held
    assert chromium_green(held["rgb"]), held
    page.close()


REMOTE_COLOUR = """() => {
  const video = document.querySelector('#tiles .tile:not(.local) video');
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 48;
  const g = canvas.getContext('2d');
  g.drawImage(video, 0, 0, 64, 48);
  const d = g.getImageData(0, 0, 64, 48).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  return sum.map((v) => v / (d.length / 4));
}"""


def make_clip(path: Path, seconds: int = 3) -> None:
    """A short blue clip with a tone, to play into a call."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libvpx", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("libopus", rate=48000)
        picture = np.zeros((240, 320, 3), dtype=np.uint8)
        picture[:, :, 2] = 220  # blue
        for i in range(seconds * 30):
            picture[:, (i * 4) % 320, :] = 255  # a white line that moves
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for i in range(seconds * 50):
            t = (np.arange(960) + i * 960) / 48000
            tone = (np.sin(2 * np.pi * 330 * t) * 6000).astype(np.int16).reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            sound.sample_rate, sound.pts = 48000, i * 960
            for packet in audio.encode(sound):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def ring_and_accept(world: World, page: Page, *args: str) -> subprocess.Popen[str]:
    call = world.lannode(1, "call", "h2", *args, "--json")
    page.wait_for_selector("#incoming:not([hidden]) #accept-call", timeout=30000)
    page.click("#accept-call")
    wait_decoding(page, 1)
    return call


def test_declining_hanging_up_and_ctrl_c_each_end_the_call_as_they_should(world: World) -> None:
    page = world.page(2)
    # declined on the page: the command says so and fails
    call = world.lannode(1, "call", "h2", "--ring", "20")
    page.wait_for_selector("#incoming:not([hidden]) #decline-call", timeout=30000)
    page.click("#decline-call")
    code, out, err = finish(call)
    assert code == 1 and "declined" in err, (out, err)
    # the page hangs up on a call that plays a file and records to MP4
    clip, recording = world.directory / "clip.webm", world.directory / "answer.mp4"
    make_clip(clip)
    call = ring_and_accept(world, page, "--play", str(clip), "--record", str(recording))
    page.wait_for_function(f"() => {{ const c = ({REMOTE_COLOUR})(); return c && c[2] > c[0] + 80 && c[2] > c[1] + 80; }}", timeout=15000)  # the page shows the blue clip
    page.wait_for_timeout(2000)
    page.click("#call-leave")
    code, out, err = finish(call)
    assert code == 0, err
    summary = summary_of(out)
    assert summary["reason"] == "h2 hung up"
    held = probe(recording)
    assert held["codec"] == "h264" and held["audio"] == 1 and held["frames"] > 0 and chromium_green(held["rgb"]), held
    # Ctrl-C at the node: it leaves cleanly, the page hears it hang up, the recording is whole
    call = ring_and_accept(world, page, "--record", str(world.directory / "interrupted.webm"))
    page.wait_for_timeout(1500)
    call.send_signal(signal.SIGINT)
    code, out, err = finish(call)
    assert code == 0, err
    assert summary_of(out)["reason"] == "hung up here"
    page.wait_for_selector("#call", state="hidden", timeout=10000)
    assert "hung up" in page.text_content("#call-status")  # type: ignore[operator]
    assert probe(world.directory / "interrupted.webm")["frames"] > 0
    # bad input is refused before anything starts
    for args, message in ((("--camera", "/dev/no-such-camera"), "no such camera"), (("--play", "/no/such.webm"), "no such file"), (("--record", str(world.directory / "x.avi")), "record to")):
        code, out, err = finish(world.lannode(1, "call", "h2", *args))
        assert code == 2 and message in err, (args, err)
    page.close()


def test_the_node_joins_a_room_with_two_pages_and_every_page_decodes_it(world: World) -> None:
    pages = [world.page(host, "#calls") for host in (2, 3)]
    for page in pages:
        page.fill("#room-name", "standup")
        page.click("#room-form button[type=submit]")
    base = world.directory / "room.webm"
    call = world.lannode(1, "call", "--room", "standup", "--record", str(base), "--duration", "12", "--json")
    for page in pages:
        assert len(wait_decoding(page, 2)) == 2  # the other page and the node
    code, out, err = finish(call)
    assert code == 0, err
    summary = summary_of(out)
    assert sorted(summary["participants"].values()) == ["h2", "h3"]
    for front in summary["participants"]:
        assert summary["frames_received"][front]["video"] > 0
    assert len(summary["recordings"]) == 2
    for path in summary["recordings"]:
        held = probe(Path(path))
        assert held["frames"] > 0 and chromium_green(held["rgb"]), held
    # the node left the room: the pages drop its tile, and the room lists only them
    pages[0].wait_for_function("() => document.querySelectorAll('#tiles .tile').length === 2", timeout=15000)
    assert sorted(m["name"] for m in world.lab.call(2, "room.members", room="standup")["members"]) == ["h2", "h3"]
    for page in pages:
        page.click("#call-leave")
        page.close()


def call_from_page(world: World, page: Page, host: int) -> None:
    peer = world.ids[host]
    page.goto(page.url.split("#")[0] + "#people")
    page.wait_for_selector(f'.peer[data-node="{peer}"][data-state=alive] .call', timeout=15000)
    page.click(f'.peer[data-node="{peer}"] .call')


def test_answer_mode_picks_up_a_listed_verified_peer_and_declines_everyone_else(world: World) -> None:
    page2, page3 = world.page(2), world.page(3)
    # hostile signaling from a page to the answering front: refused, and the plugin goes on
    (front,) = [f for f in world.lab.call(1, "rtc.fronts")["fronts"]]
    hostile = [
        ("offer", {"type": "offer", "sdp": "v=0\r\nthis is not SDP"}),
        ("offer", "not even an object"),
        ("candidate", {"candidate": "candidate:garbage", "sdpMid": "0"}),
        ("answer", {"type": "answer", "sdp": "v=0"}),
        ("offer", {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}),
    ]
    for kind, data in hostile:
        page2.evaluate("([peer, kind, data, front]) => window.lannode.api.call('rtc.signal', {peer, kind, data, to_front: front}).catch(() => null)", [world.ids[1], kind, data, front])
    # h2 is listed but not verified yet: declined with the reason
    call_from_page(world, page2, 1)
    page2.wait_for_function("() => document.querySelector('#call-status').textContent.includes('declined')", timeout=30000)
    assert "verified" in page2.text_content("#call-status")  # type: ignore[operator]
    # h3 is not listed at all, verified or not
    world.lab.call(1, "peer.trust", peer=world.ids[3])
    call_from_page(world, page3, 1)
    page3.wait_for_function("() => document.querySelector('#call-status').textContent.includes('declined')", timeout=30000)
    assert "listed" in page3.text_content("#call-status")  # type: ignore[operator]
    # once h1's owner verifies h2, h2's call is answered at once, with the node's test pattern
    world.lab.call(1, "peer.trust", peer=world.ids[2])
    call_from_page(world, page2, 1)
    page2.wait_for_function("() => document.querySelector('#call-status').textContent.includes('in a call')", timeout=30000)
    assert len(wait_decoding(page2, 1)) == 1
    page2.wait_for_timeout(3000)  # something to record
    page2.click("#call-leave")
    recordings = world.directory / "answered"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(recordings.glob("call-*-h2.webm")):
        time.sleep(0.2)
    (recording,) = recordings.glob("call-*-h2.webm")
    deadline = time.monotonic() + 20
    held: dict[str, Any] = {}
    while time.monotonic() < deadline:  # finished once the plugin has closed it
        try:
            held = probe(recording)
            if held["frames"] > 0:
                break
        except (av.FFmpegError, IndexError):
            pass
        time.sleep(0.5)
    assert held.get("frames", 0) > 0, held
    status = world.lab.call(1, "node.status")
    answer = next(p for p in status["plugins"] if p["name"] == "answer")
    assert answer["state"] == "running" and answer["restarts"] == 0
    page2.close()
    page3.close()


def test_chat_send_direct_reaches_an_open_page_over_a_data_channel(world: World) -> None:
    page = world.page(2, f"#chat/{world.ids[1]}")
    send = world.lannode(1, "chat", "send", "h2", "over the data channel", "--direct", "--json")
    code, out, err = finish(send)
    assert code == 0, err
    record = json.loads(out)
    assert record["path"] == "direct" and record["delivered_at"], record
    message = page.locator("#messages .message", has_text="over the data channel")
    message.wait_for(timeout=15000)
    assert message.get_attribute("data-path") == "direct"
    # h3 has no page open: the message goes through the link, and arrives all the same
    send = world.lannode(1, "chat", "send", "h3", "through the link", "--direct", "--json")
    code, out, err = finish(send)
    assert code == 0, err
    assert json.loads(out)["path"] == "link"
    world.lab.wait_until(lambda: any(m["text"] == "through the link" for m in world.lab.call(3, "chat.log", peer=world.ids[1])), 20, "the message on h3")
    page.close()


IMPORTED = re.compile(r"^import time:.*\|\s+(aiortc|av)(\.\S+)?\s*$", re.M)


def loaded_media_libraries(pid: int) -> list[str]:
    """aiortc's and PyAV's compiled parts mapped into a process (FFmpeg, libvpx, srtp)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if re.search(r"/(av|aiortc|av\.libs|pylibsrtp)/|libavcodec", line)})


def test_a_node_that_never_calls_loads_neither_aiortc_nor_av(nodes: NodeFactory) -> None:
    # every import of the daemon and its plugins is logged (python -X importtime)
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    home = Home(nodes.root / "quiet")
    write_config(home.path, "quiet", webui=True, gossip=nodes.gossip)
    text = home.config_path.read_text().replace('[plugins.answer]\nenabled = false', '[plugins.answer]\nenabled = true')
    home.config_path.write_text(text)
    quiet = nodes.start_on(home, name="quiet", env=env)
    other = nodes.start("other")
    quiet.wait_until(lambda: any(p["state"] == "alive" for p in quiet.call("peer.list")), what="the other node")
    quiet.wait_until(lambda: all(quiet.plugin(name)["state"] == "running" for name in ("webui", "answer")), what="both plugins running")
    quiet.wait_until(lambda: quiet.plugin("webui").get("url"), what="the web UI")
    quiet.call("chat.send", peer="other", text="no call here")
    other.wait_until(lambda: other.call("chat.log", peer="quiet"), what="the message")
    pids = [quiet.process.pid, *(p["pid"] for p in quiet.status()["plugins"])]
    log = quiet.log.read_text()
    assert "import time:" in log and re.search(r"\|\s+trio\s*$", log, re.M), "the import log is on"
    assert IMPORTED.findall(log) == []
    for pid in pids:
        assert loaded_media_libraries(pid) == [], pid
    # the detector works: a call attempt loads both (and fails: nobody has a page open)
    attempt = run_cli("call", "other", "--duration", "1", "--home", str(home.path), env=env)
    assert attempt.returncode == 1 and "nobody to ring" in attempt.stderr
    assert {name for name, _ in IMPORTED.findall(attempt.stderr)} == {"aiortc", "av"}
