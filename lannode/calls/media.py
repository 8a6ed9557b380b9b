"""What an aiortc participant sends and what it does with what it receives.

Sources (``open_source``): ``test-pattern`` (moving colour bars with a frame
counter, and a tone that beeps once a second), ``play:FILE`` (a media file,
looped) or ``camera:DEVICE`` (a V4L2 device). One source feeds every session
through aiortc's ``MediaRelay``, so it is read once however many people are in
the room.

``Receiver`` is the sink for incoming tracks: it drains every track (aiortc
queues frames until someone reads them), counts frames, and records each remote
front to its own file when asked: WebM (VP8 + Opus) or MP4 (H.264 + AAC), chosen
by the file's extension. Encoding runs in a worker thread per file, so the
asyncio loop keeps serving the connections.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, cast

import av
import numpy as np
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)
from av.video.stream import VideoStream

log = logging.getLogger("lannode.calls")

WIDTH, HEIGHT, FPS = 640, 480, 30
SAMPLE_RATE, AUDIO_PTIME = 48000, 0.020
RECORD_FORMATS = {".webm": ("libvpx", "libopus"), ".mkv": ("libvpx", "libopus"), ".mp4": ("libx264", "aac")}
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
HOLD_SECONDS = 5.0  # how long a recording waits for each track's first frame


class SourceError(Exception):
    pass


# -- sources ---------------------------------------------------------------------------------------
class TestPatternVideo(VideoStreamTrack):
    """Colour bars that slide one step a frame, with a white block per frame number: a
    receiver can tell the frames apart and see that they move."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        bars = np.array(
            [(235, 128, 128), (210, 16, 146), (170, 166, 16), (145, 54, 34), (106, 202, 222), (81, 90, 240), (41, 240, 110), (16, 128, 128)],
            dtype=np.uint8,
        )  # BT.601 YUV of white, yellow, cyan, green, magenta, red, blue, black
        columns = bars[np.arange(WIDTH) * len(bars) // WIDTH]
        self.y = np.ascontiguousarray(np.tile(columns[:, 0], (HEIGHT, 1)))
        self.u = np.ascontiguousarray(np.tile(columns[::2, 1], (HEIGHT // 2, 1)))
        self.v = np.ascontiguousarray(np.tile(columns[::2, 2], (HEIGHT // 2, 1)))
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        shift = (self.count * 4) % WIDTH
        y = np.roll(self.y, shift, axis=1)
        u = np.roll(self.u, shift // 2, axis=1)
        v = np.roll(self.v, shift // 2, axis=1)
        for bit in range(16):  # the frame number in white and black blocks along the bottom
            y[HEIGHT - 24 :, bit * 40 : bit * 40 + 36] = 235 if (self.count >> bit) & 1 else 16
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, u.reshape(HEIGHT // 4, WIDTH), v.reshape(HEIGHT // 4, WIDTH)]), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


class TestPatternAudio(AudioStreamTrack):
    """A 440 Hz tone, 200 ms of every second."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.samples = int(SAMPLE_RATE * AUDIO_PTIME)
        self.sent = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.sent / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(self.samples) + self.sent) / SAMPLE_RATE
        tone = (np.sin(2 * math.pi * 440 * t) * 8000 * ((t % 1.0) < 0.2)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = self.sent, fractions.Fraction(1, SAMPLE_RATE)
        self.sent += self.samples
        return frame


class _Clock:
    """Paces a file's tracks against one wall clock, so audio and video stay together."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait_until(self, seconds: float) -> None:
        if self.start is None:
            self.start = time.monotonic() - seconds
        delay = self.start + seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _FileTrack(MediaStreamTrack):
    def __init__(self, kind: str, clock: _Clock, player: "FilePlayer") -> None:
        super().__init__()
        self.kind = kind
        self.clock = clock
        self.player = player
        self.queue: asyncio.Queue[tuple[float, Any] | None] = asyncio.Queue(maxsize=FPS if kind == "video" else 50)

    async def recv(self) -> Any:
        self.player.begin()
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        seconds, frame = item
        await self.clock.wait_until(seconds)
        return frame

    def stop(self) -> None:
        super().stop()
        self.player.quit.set()


class FilePlayer:
    """A media file played in a loop, decoded in a thread. aiortc's MediaPlayer(loop=True)
    restarts the file's timestamps at zero on each pass, and the receiving side drops what
    looks like the past; here time keeps going forward across passes."""

    def __init__(self, path: str) -> None:
        self.path = path
        with av.open(path) as probe:
            kinds = {s.type for s in probe.streams if s.type in ("audio", "video")}
        if not kinds:
            raise SourceError(f"{path}: no audio or video in it")
        clock = _Clock()
        self.tracks = [_FileTrack(kind, clock, self) for kind in ("audio", "video") if kind in kinds]
        self.quit = threading.Event()
        self.thread: threading.Thread | None = None

    def begin(self) -> None:
        if self.thread is None:
            loop = asyncio.get_running_loop()
            self.thread = threading.Thread(target=self._decode, args=(loop,), name="lannode-play", daemon=True)
            self.thread.start()

    def _put(self, loop: asyncio.AbstractEventLoop, track: _FileTrack, item: tuple[float, Any] | None) -> None:
        future = asyncio.run_coroutine_threadsafe(track.queue.put(item), loop)
        while not self.quit.is_set():
            try:
                future.result(timeout=0.2)  # the queue's bound paces decoding to playback
                return
            except TimeoutError:
                continue
        future.cancel()

    def _decode(self, loop: asyncio.AbstractEventLoop) -> None:
        by_kind = {t.kind: t for t in self.tracks}
        offset, samples = 0.0, 0
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE, frame_size=int(SAMPLE_RATE * AUDIO_PTIME))
        try:
            while not self.quit.is_set():
                end = offset
                with av.open(self.path) as container:
                    streams = [s for s in container.streams if s.type in by_kind]
                    first: dict[str, float] = {}
                    for frame in container.decode(*streams):
                        if self.quit.is_set():
                            return
                        if not isinstance(frame, (av.VideoFrame, av.AudioFrame)) or frame.time is None:
                            continue
                        kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
                        first.setdefault(kind, frame.time)
                        at = offset + frame.time - first[kind]
                        end = max(end, at)
                        if isinstance(frame, av.VideoFrame):
                            frame.pts, frame.time_base = int(at * 90000), VIDEO_TIME_BASE
                            self._put(loop, by_kind["video"], (at, frame))
                        else:
                            for chunk in resampler.resample(frame):
                                chunk.pts, chunk.time_base = samples, fractions.Fraction(1, SAMPLE_RATE)
                                self._put(loop, by_kind["audio"], (samples / SAMPLE_RATE, chunk))
                                samples += chunk.samples
                offset = max(end + 1 / FPS, samples / SAMPLE_RATE)  # the next pass starts where this one ended
        except (av.FFmpegError, OSError) as exc:
            log.error("playing %s stopped: %s", self.path, exc)
        for track in self.tracks:
            self._put(loop, track, None)

    def stop(self) -> None:
        self.quit.set()


class Source:
    """One source, fanned out to every session."""

    def __init__(self, description: str, originals: list[MediaStreamTrack], player: MediaPlayer | FilePlayer | None = None) -> None:
        self.description = description
        self.originals = originals
        self.player = player
        self.relay = MediaRelay()
        self.sent: dict[str, int] = {}

    def tracks(self) -> list[MediaStreamTrack]:
        return [_Counting(self.relay.subscribe(track), self.sent) for track in self.originals]

    def stop(self) -> None:
        for track in self.originals:
            track.stop()
        if isinstance(self.player, FilePlayer):
            self.player.stop()


class _Counting(MediaStreamTrack):
    """A session's view of the source that counts what it hands the encoder."""

    def __init__(self, inner: MediaStreamTrack, counts: dict[str, int]) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self.counts = counts

    async def recv(self) -> Any:
        frame = await self.inner.recv()
        self.counts[self.kind] = self.counts.get(self.kind, 0) + 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.inner.stop()


def open_source(spec: str) -> Source:
    """``test-pattern``, ``play:FILE`` or ``camera:DEVICE``."""
    if spec == "test-pattern":
        return Source("a test pattern and tone", [TestPatternAudio(), TestPatternVideo()])
    kind, _, target = spec.partition(":")
    if kind == "play" and target:
        if not Path(target).is_file():
            raise SourceError(f"{target}: no such file to play")
        try:
            played = FilePlayer(target)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{target}: not a media file FFmpeg can read ({exc})") from None
        return Source(f"{target}, looped", list(played.tracks), played)
    if kind == "camera" and target:
        if not Path(target).exists():
            raise SourceError(f"{target}: no such camera device")
        try:
            player = MediaPlayer(target, format="v4l2", options={"video_size": f"{WIDTH}x{HEIGHT}", "framerate": str(FPS)})
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{target}: the camera did not open ({exc})") from None
    else:
        raise SourceError(f"{spec!r} is not a source: test-pattern, play:FILE or camera:DEVICE")
    tracks = [t for t in (player.audio, player.video) if t is not None]
    if not tracks:
        raise SourceError(f"{target} has neither audio nor video")
    return Source(f"{kind} {target}", tracks, player)


# -- what comes in ---------------------------------------------------------------------------------
class Recording:
    """One remote front's audio and video in one file. The streams are fixed when the
    first tracks arrive (a container's header cannot grow); timestamps start at zero
    and keep each track's own clock, so audio and video stay in step."""

    def __init__(self, path: Path, tracks: list[MediaStreamTrack]) -> None:
        self.path = path
        video_codec, audio_codec = RECORD_FORMATS[path.suffix.lower()]
        self.container = av.open(str(path), mode="w")
        self.streams: dict[MediaStreamTrack, Any] = {}
        self.started = time.monotonic()
        self.first: dict[MediaStreamTrack, tuple[int, int]] = {}  # track -> (its first pts, our pts then)
        self.last: dict[MediaStreamTrack, int] = {}
        self.errors = 0
        for track in tracks:
            stream: Any
            if track.kind == "video":
                stream = cast(VideoStream, self.container.add_stream(video_codec, rate=FPS))
                stream.pix_fmt = "yuv420p"
                stream.time_base = VIDEO_TIME_BASE
                stream.codec_context.time_base = VIDEO_TIME_BASE
                stream.bit_rate = 1_500_000
                stream.options = {"deadline": "realtime", "cpu-used": "8"} if video_codec == "libvpx" else {"preset": "veryfast", "tune": "zerolatency"}
            else:
                stream = self.container.add_stream(audio_codec, rate=SAMPLE_RATE)
            self.streams[track] = stream
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lannode-record")
        self.size_set: set[MediaStreamTrack] = set()
        self.held: list[tuple[MediaStreamTrack, Any]] | None = []
        for track, stream in self.streams.items():
            if track.kind == "video":  # until its first frame says otherwise
                stream.width, stream.height = WIDTH, HEIGHT

    def write(self, track: MediaStreamTrack, frame: Any) -> None:
        """In the worker thread: encode one frame and mux what comes out. Until every track
        has sent a frame (or ``HOLD_SECONDS`` passed) frames are held: the video's size is
        its first frame's, and the container's header is written with the first packet."""
        if self.held is not None:
            self.held.append((track, frame))
            if track.kind == "video" and track not in self.size_set:
                stream = self.streams[track]
                stream.width, stream.height = frame.width, frame.height
                self.size_set.add(track)
            if len({t for t, _ in self.held}) < len(self.streams) and time.monotonic() - self.started < HOLD_SECONDS:
                return
            held, self.held = self.held, None
            for track, frame in held:
                self._encode(track, frame)
            return
        self._encode(track, frame)

    def _encode(self, track: MediaStreamTrack, frame: Any) -> None:
        stream = self.streams[track]
        if frame.pts is None or frame.time_base is None:
            return
        if track not in self.first:
            offset = int((time.monotonic() - self.started) / frame.time_base)
            self.first[track] = (frame.pts, offset)
        first, offset = self.first[track]
        pts = frame.pts - first + offset
        if pts <= self.last.get(track, -1):
            return  # a repeated or reordered timestamp: a container wants them rising
        self.last[track] = pts
        if track.kind == "video" and (frame.width, frame.height) != (stream.width, stream.height):
            frame = frame.reformat(width=stream.width, height=stream.height)
        frame.pts = pts
        for packet in stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        if self.held:
            held, self.held = self.held, None
            for track, frame in held:
                self._encode(track, frame)
        for stream in self.streams.values():
            try:
                for packet in stream.encode(None):
                    self.container.mux(packet)
            except (av.FFmpegError, ValueError):
                pass  # a stream that never got a frame
        self.container.close()


class Receiver:
    """The sink for every session's incoming tracks."""

    def __init__(self, record_to: Callable[[str], Path | None] = lambda front: None) -> None:
        self.record_to = record_to  # where a front's call is recorded, if it is
        self.tasks: dict[str, list[asyncio.Task[None]]] = {}
        self.received: dict[str, dict[str, int]] = {}
        self.recordings: dict[str, Recording] = {}
        self.files: list[str] = []

    def add(self, front: str, tracks: list[MediaStreamTrack]) -> None:
        recording = self.recordings.get(front)
        path = self.record_to(front) if recording is None else None
        if path is not None:
            try:
                recording = self.recordings[front] = Recording(path, tracks)
                self.files.append(str(path))
            except (av.FFmpegError, OSError, ValueError) as exc:
                log.error("cannot record to %s: %s", path, exc)
        counts = self.received.setdefault(front, {})
        for track in tracks:
            tracked = recording if recording is not None and track in recording.streams else None
            self.tasks.setdefault(front, []).append(asyncio.ensure_future(self._drain(track, counts, tracked)))

    async def _drain(self, track: MediaStreamTrack, counts: dict[str, int], recording: Recording | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            counts[track.kind] = counts.get(track.kind, 0) + 1
            if recording is not None:
                try:
                    await loop.run_in_executor(recording.worker, recording.write, track, frame)
                except Exception as exc:  # one bad frame costs that frame, not the recording
                    recording.errors += 1
                    if recording.errors <= 3:
                        log.warning("recording %s: %s", recording.path, exc)

    def remove(self, front: str) -> None:
        for task in self.tasks.pop(front, []):
            task.cancel()
        recording = self.recordings.pop(front, None)
        if recording is not None:
            recording.worker.submit(recording.finish)
            recording.worker.shutdown(wait=True)

    def counts(self) -> dict[str, dict[str, int]]:
        return {front: dict(counts) for front, counts in self.received.items()}

    def close(self) -> None:
        for front in list(self.tasks) + list(self.recordings):
            self.remove(front)
