"""The demo's job page: submit a job to sisy's JSON API and watch it run."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from mediaapp import presets
from mediaapp.media import ProgramMissing, ffmpeg_missing, make_test_clip


@login_required
def job_page(request: HttpRequest) -> HttpResponse:
    """The form; everything else happens in the browser, against ``/sisy/``.

    The media pipeline is offered when ffmpeg is installed; its test clip is
    made on the first visit (about a second), then reused.
    """
    notes = []
    problem = ffmpeg_missing()
    if problem is None:
        try:
            make_test_clip()
        except (ProgramMissing, RuntimeError, OSError) as exc:
            problem = f"the media pipeline's test clip could not be made: {exc}"
    if problem is not None:
        notes.append(f"The media pipeline is not offered: {problem}")
    context = {"presets": presets.page_presets(media=problem is None), "notes": notes}
    return render(request, "sisy_demo/jobs.html", context)
