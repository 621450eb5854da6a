"""The demo's job specifications, shared by ``run.py`` and the job page."""

from __future__ import annotations

from typing import Any

from mediaapp.media import TEST_CLIP

MIB = 1 << 20
#: Where the media pipeline's ffmpeg task writes, relative to ``DEMO_FILES_ROOT``.
TRANSCODED = "var/media/testsrc-h264.mp4"


def demo_spec(checksum_mib: int = 128) -> dict[str, Any]:
    """Three tasks in pure Python: a checksum, a word count, a rendered image."""
    return {
        "job_title": "sisy demo: checksum, wordcount, thumbnail",
        "tasks": [
            {"checksum": {"generate": {"size": checksum_mib * MIB, "seed": 42}}},
            {"wordcount": {"path": "README.md", "top": 5}},
            {"thumbnail": {"name": "mandelbrot", "width": 240, "height": 160}},
        ],
    }


def media_spec(*, realtime: bool = False) -> dict[str, Any]:
    """The media pipeline: transcode the test clip to H.264, describe the result, hash it."""
    ffmpeg: dict[str, Any] = {
        "input": TEST_CLIP,
        "output": "testsrc-h264",
        "container": "mp4",
        "width": 480,
        "crf": 28,
    }
    if realtime:
        ffmpeg["realtime"] = True
    return {
        "job_title": "sisy demo: media pipeline (ffmpeg, probe, checksum)",
        "tasks": [
            {"ffmpeg": ffmpeg},
            {"probe": {"path": TRANSCODED}},
            {"checksum": {"path": TRANSCODED, "algorithm": "sha256"}},
        ],
    }


def page_presets(*, media: bool) -> list[dict[str, Any]]:
    """The choices of the job page; the media pipeline only where ffmpeg is installed."""
    presets = [
        {
            "name": "Checksum, word count and thumbnail",
            "spec": demo_spec(checksum_mib=512),
        },
        {
            "name": "Word count of a text you type",
            "spec": {
                "job_title": "word count",
                "tasks": [{"wordcount": {"text": "Type your own text here.", "top": 3}}],
            },
        },
        {
            "name": "Invalid on purpose: the API names each problem",
            "spec": {
                "tasks": [
                    {"thumbnail": {"name": "Not a slug!", "width": 4}},
                    {"nosuch": {}},
                ]
            },
        },
    ]
    if media:
        presets.insert(
            1,
            {
                "name": "Media pipeline: ffmpeg, probe, checksum (at the clip's own pace)",
                "spec": media_spec(realtime=True),
            },
        )
    return presets
