"""The operator commands: sisy_status and sisy_submit (output and exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

import sisy
from sisy import heartbeat, runner
from sisy.models import Job, JobStatus
from sisy.state import WorkerState
from tests.conftest import ROOT, Workers

pytestmark = pytest.mark.django_db(transaction=True)


def test_status_reports_workers_jobs_and_failures(
    redis, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = WorkerState(worker_id="st-1")
    busy.job_started("00000000-0000-0000-0000-00000000000a", "encode", 1)
    heartbeat.publish(redis, busy)
    failing = sisy.submit({"job_title": "broken", "fail": {"message": "disk full"}})
    runner.handle_wakeup(str(failing.job_id), WorkerState(worker_id="w"), "sisy.run")
    sisy.submit({"job_title": "waiting", "record": {"label": "q"}})
    call_command("sisy_status")
    out = capsys.readouterr().out
    assert "Workers: 1 live" in out
    assert "st-1 on" in out and "in_progress encode (00000000-0000-0000-0000-00000000000a)" in out
    assert "1 queued" in out and "1 failed" in out
    assert "Oldest queued job:" in out and "s old" in out
    assert f"broken ({failing.job_id}): task 0 (fail) failed: disk full" in out
    call_command("sisy_status", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["queued"] == 1 and report["jobs"]["failed"] == 1
    assert report["workers"][0]["worker_id"] == "st-1"
    assert report["recent_failures"][0]["error"] == "task 0 (fail) failed: disk full"


def test_submit_reads_a_file_and_reports_the_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"job_title": "from file", "record": {"label": "f"}}))
    call_command("sisy_submit", str(spec))
    job = Job.objects.get()
    assert f"submitted job {job.job_id} (from file)" in capsys.readouterr().out
    assert job.status == JobStatus.QUEUED


def test_submit_refuses_an_invalid_spec_and_stores_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"tasks": [{"record": {"label": 5}}]}))
    with pytest.raises(CommandError, match=r"task 0, \$\.label: 5 is not of type 'string'"):
        call_command("sisy_submit", str(spec))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("sisy_submit", str(tmp_path / "missing.json"))
    assert Job.objects.count() == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("spec", "code", "expected"),
    [
        ({"job_title": "ok", "slow": {"seconds": 1}}, 0, "succeeded"),
        (
            {
                "job_title": "ko",
                "tasks": [{"slow": {"seconds": 0.5}}, {"fail": {"message": "boom"}}],
            },
            1,
            "boom",
        ),
    ],
)
def test_submit_wait_follows_the_job_and_exits_with_its_outcome(
    workers: Workers, tmp_path: Path, spec: dict, code: int, expected: str
) -> None:
    workers.start()
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, "-m", "django", "sisy_submit", str(path), "--wait", "--timeout", "30"],
        env=workers.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == code, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr
    assert "task 1 of" in result.stdout and "[#" in result.stdout


@pytest.mark.parametrize("command", ["sisy_worker", "sisy_heartbeat"])
def test_an_unknown_layer_alias_is_named(command: str) -> None:
    with pytest.raises(
        CommandError, match=r"CHANNEL_LAYERS has no 'nope' entry \(named by --layer\)"
    ):
        call_command(command, "--layer", "nope")


def test_the_worker_refuses_a_channel_its_application_does_not_route() -> None:
    with pytest.raises(
        CommandError,
        match=r"tests\.asgi\.application does not route the channel\(s\) sisy\.nowhere: "
        r"route sisy\.nowhere to sisy\.consumers\.RunConsumer there .*leave them out",
    ):
        call_command("sisy_worker", "sisy.run", "sisy.nowhere")


def test_the_worker_s_routing_advice_fits_each_channel(capsys: pytest.CaptureFixture[str]) -> None:
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter

    from sisy.consumers import RunConsumer
    from sisy.management.commands.sisy_worker import Command

    defaults = ["sisy.run", "sisy.heartbeat"]
    command = Command()
    # No "channel" key at all: sisy's channels need sisy's routes, not RunConsumer.
    bare = ProtocolTypeRouter({})
    with pytest.raises(CommandError) as refused:
        command._routed_channels(bare, defaults, named=False)
    message = str(refused.value)
    assert "route sisy.run, sisy.heartbeat with sisy.routing.channel_routes()" in message
    assert "RunConsumer" not in message and "name the channels to listen on" in message
    # Only the run channel routed, channels not named: it runs jobs, and says what it leaves.
    run_only = ProtocolTypeRouter({"channel": ChannelNameRouter({"sisy.run": RunConsumer})})
    assert command._routed_channels(run_only, defaults, named=False) == ["sisy.run"]
    assert "listening on sisy.run only" in capsys.readouterr().err
    with pytest.raises(CommandError, match=r"sisy\.heartbeat"):
        command._routed_channels(run_only, defaults, named=True)


@override_settings(SISY_CHANNEL_LAYER="")
def test_an_invalid_layer_setting_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="SISY_CHANNEL_LAYER must be a non-empty string"):
        call_command("sisy_heartbeat")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--timeout", "5"], "apply only with --wait"),
        (["--interval", "1"], "apply only with --wait"),
        (["--wait", "--timeout", "-1"], "--timeout must be a positive number of seconds, not -1"),
        (["--wait", "--interval", "0"], "--interval must be a positive number of seconds"),
        (["--wait", "--timeout", "nan"], "--timeout must be a positive number"),
        (["--wait", "--interval", "inf"], "--interval must be a finite number of seconds"),
    ],
)
def test_submit_refuses_meaningless_options_before_submitting(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"record": {"label": "x"}}))
    with pytest.raises(CommandError, match=message):
        call_command("sisy_submit", str(spec), *arguments)
    assert not Job.objects.exists()


def test_status_refuses_a_negative_failure_count() -> None:
    with pytest.raises(CommandError, match="--failures must be 0 or more, not -1"):
        call_command("sisy_status", "--failures", "-1")


@override_settings(SISY_HEARTBEAT_FREQUENCY=60)
def test_the_clock_says_where_and_how_often_it_ticks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sisy.management.commands import sisy_heartbeat

    ran: list[tuple[str, float]] = []

    async def run_clock(layer: object, channel: str, frequency: float) -> None:
        ran.append((channel, frequency))

    monkeypatch.setattr(sisy_heartbeat, "run_clock", run_clock)
    call_command("sisy_heartbeat")
    assert ran == [("sisy.heartbeat", 60.0)]
    assert capsys.readouterr().out == "sisy clock on sisy.heartbeat: a tick every 60 s\n"
    call_command("sisy_heartbeat", "-v", "0")
    assert capsys.readouterr().out == ""
