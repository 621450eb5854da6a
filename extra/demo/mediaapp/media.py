"""The media pipeline's modules: ``ffmpeg`` transcodes a clip, ``probe`` describes one.

Both run external programs, ``ffmpeg`` and ``ffprobe`` (``settings.DEMO_FFMPEG``
and ``settings.DEMO_FFPROBE``: a name looked up on PATH, or a path). A worker
without them fails the job in ``initialize()``, before anything runs, with a
message saying what to install. ``make_test_clip()`` makes the clip the demo
transcodes, from ffmpeg's own test sources, so the demo needs no media files.

``ffmpeg`` reports its progress from ffmpeg's machine-readable output
(``-progress pipe:1``: blocks of ``key=value`` lines, each ending with
``progress=continue`` or ``progress=end``), as the fraction of the input's
duration written so far. It writes to a temporary file renamed at the end, and
kills ffmpeg in ``cleanup()`` when the job fails or is cancelled half-way.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from sisy.modules import Module, register

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The clip ``make_test_clip()`` writes, relative to ``settings.DEMO_FILES_ROOT``.
TEST_CLIP = "var/media/testsrc.mkv"
#: Containers: file extension -> ffmpeg muxer, default video and audio codecs.
CONTAINERS = {
    "mp4": ("mp4", "libx264", "aac"),
    "mkv": ("matroska", "libx264", "aac"),
    "webm": ("webm", "libvpx-vp9", "libopus"),
}
#: How long ffmpeg gets to exit after SIGTERM before SIGKILL.
KILL_AFTER = 5.0


class ProgramMissing(RuntimeError):
    """ffmpeg or ffprobe is not installed where this worker looks for it."""


def program(setting: str, default: str) -> str:
    """The full path of the program ``settings.<setting>`` names; ``ProgramMissing`` if none."""
    name = str(getattr(settings, setting, default))
    found = shutil.which(name)
    if found is None:
        raise ProgramMissing(
            f"{default} is not installed: no {name!r} program on PATH (settings.{setting}); "
            "install FFmpeg (Debian or Ubuntu: apt-get install ffmpeg)"
        )
    return found


def ffmpeg_missing() -> str | None:
    """Why the media pipeline cannot run here, or ``None`` when it can."""
    try:
        program("DEMO_FFMPEG", "ffmpeg")
        program("DEMO_FFPROBE", "ffprobe")
    except ProgramMissing as exc:
        return str(exc)
    return None


def files_root() -> Path:
    return Path(settings.DEMO_FILES_ROOT).resolve()


def input_file(relative: str) -> Path:
    """The existing file ``relative`` names under ``DEMO_FILES_ROOT``; ``ValueError`` otherwise."""
    root = files_root()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} is outside the demo's files")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {relative!r} (under {root})")
    return path


def shown_path(path: Path) -> str:
    """``path`` relative to ``DEMO_FILES_ROOT`` when inside it (so a later task can name it)."""
    try:
        return str(path.resolve().relative_to(files_root()))
    except ValueError:
        return str(path)


def make_test_clip(
    relative: str = TEST_CLIP, *, seconds: int = 12, size: str = "640x360", rate: int = 25
) -> Path:
    """Write a clip from ffmpeg's test sources (``testsrc2`` and a sine tone), unless it exists.

    ``ProgramMissing`` without ffmpeg; ``RuntimeError`` with ffmpeg's own words
    when it fails. The clip is written to a temporary file, then renamed.
    """
    target = files_root() / relative
    if target.is_file():
        return target
    ffmpeg = program("DEMO_FFMPEG", "ffmpeg")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    command = [
        ffmpeg,
        *("-hide_banner", "-nostdin", "-loglevel", "error", "-y"),
        *("-f", "lavfi", "-i", f"testsrc2=duration={seconds}:size={size}:rate={rate}"),
        *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"),
        *("-c:v", "mpeg4", "-q:v", "3", "-c:a", "flac", "-shortest", "-f", "matroska"),
        temporary,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg could not make the test clip: {done.stderr.strip()}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def probe(path: Path) -> dict[str, Any]:
    """ffprobe's JSON description of ``path`` (format and streams)."""
    ffprobe = program("DEMO_FFPROBE", "ffprobe")
    command = [ffprobe, "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffprobe could not read {shown_path(path)}: {done.stderr.strip()}")
    description: dict[str, Any] = json.loads(done.stdout)
    return description


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def progress_blocks(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """The blocks of ffmpeg's ``-progress`` output, each a dict, as they arrive."""
    block: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        block[key] = value.strip()
        if key == "progress":
            yield block
            block = {}


@register("ffmpeg")
class Ffmpeg(Module):
    """Transcode a clip with ffmpeg (H.264 or VP9), reporting progress as it goes."""

    schema = {
        "$schema": SCHEMA_DIALECT,
        "title": "ffmpeg",
        "type": "object",
        "properties": {
            "input": {
                "type": "string",
                "minLength": 1,
                "description": "a file under the demo's directory, e.g. var/media/testsrc.mkv",
            },
            "output": {
                "type": "string",
                "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$",
                "description": "the output's name, without extension; written to MEDIA_ROOT",
            },
            "container": {"enum": sorted(CONTAINERS)},
            "video_codec": {"enum": ["libx264", "libvpx-vp9"]},
            "audio_codec": {"enum": ["aac", "libopus", "none"]},
            "crf": {"type": "integer", "minimum": 0, "maximum": 51},
            "preset": {
                "enum": ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"]
            },
            "width": {"type": "integer", "minimum": 16, "maximum": 3840, "multipleOf": 2},
            "max_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "realtime": {
                "type": "boolean",
                "description": "read the input at its own pace (ffmpeg -re), to watch progress",
            },
        },
        "required": ["input", "output"],
        "additionalProperties": False,
        # WebM holds VP9 video and Opus audio only.
        "if": {"properties": {"container": {"const": "webm"}}, "required": ["container"]},
        "then": {
            "properties": {
                "video_codec": {"const": "libvpx-vp9"},
                "audio_codec": {"enum": ["libopus", "none"]},
            }
        },
    }

    def initialize(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._partial: Path | None = None
        self.ffmpeg = program("DEMO_FFMPEG", "ffmpeg")
        self.source = input_file(self.data["input"])
        container = self.data.get("container", "mp4")
        self.muxer, default_video, default_audio = CONTAINERS[container]
        self.video_codec = self.data.get("video_codec", default_video)
        self.audio_codec = self.data.get("audio_codec", default_audio)
        media_root = Path(settings.MEDIA_ROOT)
        media_root.mkdir(parents=True, exist_ok=True)
        self.target = media_root / f"{self.data['output']}.{container}"
        if self.target.resolve() == self.source:
            raise ValueError(f"the output {shown_path(self.target)} would overwrite the input")
        duration = _number(probe(self.source).get("format", {}).get("duration"))
        if "max_seconds" in self.data:
            limit = float(self.data["max_seconds"])
            duration = limit if duration is None else min(duration, limit)
        self.duration = duration

    def command(self, output: Path) -> list[str]:
        command = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        if self.data.get("realtime"):
            command.append("-re")
        command += ["-i", str(self.source)]
        if "max_seconds" in self.data:
            command += ["-t", f"{float(self.data['max_seconds']):g}"]
        if "width" in self.data:
            command += ["-vf", f"scale={self.data['width']}:-2"]
        crf = str(self.data.get("crf", 28))
        command += ["-c:v", self.video_codec, "-crf", crf, "-pix_fmt", "yuv420p"]
        if self.video_codec == "libx264":
            command += ["-preset", self.data.get("preset", "veryfast")]
        else:  # VP9 in constant quality mode, at its fastest
            command += ["-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
        if self.audio_codec == "none":
            command.append("-an")
        else:
            command += ["-c:a", self.audio_codec, "-b:a", "96k"]
        return [*command, "-progress", "pipe:1", "-nostats", "-f", self.muxer, str(output)]

    def run(self) -> dict[str, Any]:
        fd, partial = tempfile.mkstemp(
            dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".part"
        )
        os.close(fd)
        self._partial = Path(partial)
        command = self.command(self._partial)
        started = time.monotonic()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                bufsize=1,
            )
            assert self._process.stdout is not None
            last: dict[str, str] = {}
            for block in progress_blocks(self._process.stdout):
                last = block
                self._report(block)
            status = self._process.wait()
            if status != 0:
                raise RuntimeError(f"ffmpeg exited with status {status}: {_tail(errors)}")
        os.replace(self._partial, self.target)
        self._partial = None
        return {
            "output": shown_path(self.target),
            "bytes": self.target.stat().st_size,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "duration": self.duration,
            "frames": int(_number(last.get("frame")) or 0),
            "seconds": round(time.monotonic() - started, 3),
            "command": shlex.join(
                [
                    "ffmpeg",
                    *(
                        shown_path(self.source) if arg == str(self.source) else arg
                        for arg in command[1:-1]
                    ),
                    shown_path(self.target),
                ]
            ),
        }

    def _report(self, block: dict[str, str]) -> None:
        if block.get("progress") == "end":
            self.progress(1.0, f"done, {block.get('frame', '?')} frames")
            return
        written_us = _number(block.get("out_time_us"))
        written = max(0.0, written_us / 1e6) if written_us is not None else 0.0
        speed = block.get("speed", "").strip() or "?"
        if self.duration:
            message = f"{written:.1f} of {self.duration:.1f} s, speed {speed}"
            self.progress(written / self.duration, message)
        else:
            self.progress(0.0, f"{written:.1f} s written, speed {speed}")

    def cleanup(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:  # failed or cancelled half-way
            process.terminate()
            try:
                process.wait(KILL_AFTER)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        partial = getattr(self, "_partial", None)
        if partial is not None:
            partial.unlink(missing_ok=True)


def _tail(stream: IO[str], lines: int = 10) -> str:
    stream.seek(0)
    text = stream.read().strip().splitlines()
    return " / ".join(text[-lines:]) or "(no message)"


@register("probe")
class Probe(Module):
    """Describe a media file with ffprobe: its container, duration and streams."""

    schema = {
        "$schema": SCHEMA_DIALECT,
        "title": "probe",
        "type": "object",
        "properties": {"path": {"type": "string", "minLength": 1}},
        "required": ["path"],
        "additionalProperties": False,
    }

    def initialize(self) -> None:
        program("DEMO_FFPROBE", "ffprobe")
        self.path = input_file(self.data["path"])

    def run(self) -> dict[str, Any]:
        description = probe(self.path)
        media = description.get("format", {})
        streams = []
        for stream in description.get("streams", []):
            entry = {"type": stream.get("codec_type"), "codec": stream.get("codec_name")}
            if stream.get("codec_type") == "video":
                entry.update(
                    width=stream.get("width"),
                    height=stream.get("height"),
                    frame_rate=stream.get("avg_frame_rate"),
                    pixel_format=stream.get("pix_fmt"),
                )
            elif stream.get("codec_type") == "audio":
                entry.update(
                    sample_rate=int(_number(stream.get("sample_rate")) or 0),
                    channels=stream.get("channels"),
                )
            streams.append(entry)
        self.progress(1.0, f"{len(streams)} stream(s)")
        return {
            "path": shown_path(self.path),
            "format": media.get("format_name"),
            "duration": _number(media.get("duration")),
            "bytes": int(_number(media.get("size")) or 0),
            "bit_rate": int(_number(media.get("bit_rate")) or 0),
            "streams": streams,
        }
