"""Workers killed, frozen and stopped (issue 5, cases 1 to 4).

Settings in every case (tests/chaos/conftest.py): a clock tick every second,
a job lease of 4 s renewed every 0.5 s, at most 3 attempts per job.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest

import sisy
from sisy import runner
from sisy.models import Job, JobStatus
from tests.chaos.conftest import LEASE, TICK, Chaos, poll, waited

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def running_job(job: Job, timeout: float = 30) -> Job:
    def started() -> Job | None:
        job.refresh_from_db()
        return job if job.status == JobStatus.IN_PROGRESS else None

    found: Job = poll(started, timeout, f"job {job.job_id} to start")
    return found


def test_crash_storm(chaos: Chaos) -> None:
    """Case 1: 2,000 jobs, 3 workers, a random worker SIGKILLed and restarted every 2 s.

    Each job's run() takes 10 ms. Expected: nothing lost, no outcome recorded
    twice, duplicate starts <= kills x (1 + 50 ms / 10 ms): a kill re-runs the
    job that was running and the successes its worker held unwritten, which
    ended less than CLAIM_WINDOW (50 ms) before (see "Grouped completions" in
    docs/topics/workers.rst),
    and each job a killed worker had started starts again within lease + one
    tick (4 + 1 s, 3 s allowed for load).
    """
    total = 2000
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    slots = {f"storm-{n}": chaos.start_worker(f"storm-{n}", wait=False) for n in range(3)}
    chaos.start_clock()
    stats = chaos.submit(total, seconds=0.01)
    killed_at: dict[int, float] = {}  # pid -> when
    storm_started = time.monotonic()
    while chaos.finished_count() < total and time.monotonic() - storm_started < 240:
        time.sleep(2)
        slot = rng.choice(sorted(slots))
        chaos.kill(slots[slot])
        killed_at[slots[slot].pid] = time.time()
        slots[slot] = chaos.start_worker(f"{slot}.{len(killed_at)}", wait=False)
    storm_seconds = time.monotonic() - storm_started
    chaos.wait_finished(total, 120)
    tally = chaos.tally()
    kills = len(killed_at)
    # Time to recover: from a kill to the new start of the job the dead worker held.
    delays = sorted(chaos.restart_delays(killed_at))
    chaos.report(
        "1 crash storm",
        **tally.figures(),
        kills=kills,
        seed=seed,
        submit_errors=len(stats.errors),
        storm_seconds=round(storm_seconds, 1),
        restarts_after_kill_s=[round(delay, 1) for delay in delays],
        attempts=tally.attempts,
    )
    assert stats.errors == []
    assert tally.jobs == total
    assert tally.statuses == {"succeeded": total}, tally.statuses
    assert tally.recorded_twice == 0
    assert tally.succeeded_without_run == 0
    assert tally.duplicate_starts <= kills * (1 + round(runner.CLAIM_WINDOW / 0.01))
    assert max(delays, default=0.0) <= LEASE + TICK + 3


def test_recovery_after_sigkill(chaos: Chaos) -> None:
    """Case 2: SIGKILL the worker of a 10 s job 1 s into it; the other worker completes it.

    The job must start again (attempt 2) within lease (4 s) + one tick (1 s),
    with 2 s allowed for a loaded machine, and then succeed.
    """
    workers = {"rec-a": chaos.start_worker("rec-a"), "rec-b": chaos.start_worker("rec-b")}
    chaos.start_clock()
    job = running_job(sisy.submit(chaos.spec(0, seconds=10, progress=True)))
    victim = job.worker
    (survivor,) = set(workers) - {victim}
    assert job.started_at is not None
    time.sleep(max(0.0, 1 - (time.time() - job.started_at.timestamp())))
    chaos.kill(workers[victim])
    killed_at = time.monotonic()

    def restarted() -> bool:
        job.refresh_from_db()
        return job.attempts == 2 and job.status == JobStatus.IN_PROGRESS

    restart = waited(restarted, 30)
    restart_after = None if restart is None else time.monotonic() - killed_at
    waited(lambda: Job.objects.get(pk=job.pk).is_finished, 30, 0.2)
    done_after = time.monotonic() - killed_at
    job.refresh_from_db()
    task = job.ordered_tasks()[0]
    starts = int(chaos.counter.hget("chaos:starts", str(job.job_id)) or 0)
    recorded = int(chaos.counter.hget("chaos:recorded", str(job.job_id)) or 0)
    chaos.report(
        "2 recovery",
        lease_s=LEASE,
        tick_s=TICK,
        restarted_after_kill_s=restart_after and round(restart_after, 2),
        completed_after_kill_s=round(done_after, 2),
        attempts=job.attempts,
        starts=starts,
        recorded=recorded,
        status=job.status,
    )
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    assert job.worker == survivor
    assert task.result["attempt"] == 2
    assert starts == 2 and recorded == 1
    assert restart_after is not None and restart_after <= LEASE + TICK + 2


@pytest.mark.parametrize("resume", ["after", "during"])
def test_zombie_worker_cannot_record_a_late_completion(chaos: Chaos, resume: str) -> None:
    """Case 3: SIGSTOP a worker past its lease; the job is reassigned; then SIGCONT.

    The job (run() waits 6 s without reporting progress) is frozen 1 s in and
    requeued when its 4 s lease runs out; the other worker runs it again
    (attempt 2). The frozen worker is resumed ``after`` the other worker
    finished the job (a refusal on the job's status), or ``during`` its run
    (a refusal on the worker id and attempt alone). Its run() returns at once;
    its write of the outcome must be refused and logged.
    """
    workers = {"zom-a": chaos.start_worker("zom-a"), "zom-b": chaos.start_worker("zom-b")}
    chaos.start_clock()
    job = running_job(sisy.submit(chaos.spec(0, seconds=6)))
    zombie_id = job.worker
    (other_id,) = set(workers) - {zombie_id}
    zombie = workers[zombie_id]
    time.sleep(1)
    chaos.kill(zombie, signal.SIGSTOP)
    stopped_at = time.monotonic()

    def rerun_started() -> bool:
        job.refresh_from_db()
        return job.attempts == 2 and job.status == JobStatus.IN_PROGRESS

    try:
        if resume == "after":
            poll(lambda: Job.objects.get(pk=job.pk).is_finished, 40, "the job to finish elsewhere")
        else:
            poll(rerun_started, 30, "the job to start again elsewhere")
            time.sleep(1)
    finally:
        zombie.send_signal(signal.SIGCONT)
    stopped_for = time.monotonic() - stopped_at
    other_was_running = Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS
    refusal = f"job {job.job_id} attempt 1 is no longer worker {zombie_id}'s"
    refused = waited(lambda: refusal in chaos.log_of(zombie), 20) is not None
    waited(lambda: Job.objects.get(pk=job.pk).is_finished, 30)
    job.refresh_from_db()
    result = job.ordered_tasks()[0].result
    key = str(job.job_id)
    figures = {
        "resumed": resume,
        "stopped_for_s": round(stopped_for, 1),
        "other_worker_running_at_resume": other_was_running,
        "final_worker_is_other": job.worker == other_id,
        "attempts": job.attempts,
        "result_attempt": result and result.get("attempt"),
        "starts": int(chaos.counter.hget("chaos:starts", key) or 0),
        "runs_completed": int(chaos.counter.hget("chaos:runs_done", key) or 0),
        "recorded": int(chaos.counter.hget("chaos:recorded", key) or 0),
        "refusal_logged": refused,
    }
    chaos.report(f"3 zombie ({resume})", **figures)
    assert refused, f"the zombie did not log {refusal!r}"
    assert stopped_for > LEASE
    assert other_was_running == (resume == "during")
    assert job.status == JobStatus.SUCCEEDED
    assert job.worker == other_id and job.attempts == 2
    assert result == {"pid": workers[other_id].pid, "attempt": 2}
    # Both runs returned; only the second was recorded.
    assert figures["starts"] == 2 and figures["runs_completed"] == 2
    assert figures["recorded"] == 1
    assert zombie.poll() is None  # the zombie lives on and keeps working
    after = sisy.submit(chaos.spec(1))
    poll(lambda: Job.objects.get(pk=after.pk).is_finished, 20, "a job after the zombie woke")


def test_sigterm_lets_the_running_job_finish_and_leaves_the_queue(chaos: Chaos) -> None:
    """Case 4: SIGTERM a worker running a 3 s job while 50 jobs are queued.

    The job succeeds, the worker exits with status 0 about when the job ends,
    and the other worker runs all 50 (each takes 50 ms, so they are still
    queued when the signal is sent).
    """
    workers = {"term-a": chaos.start_worker("term-a"), "term-b": chaos.start_worker("term-b")}
    long = running_job(sisy.submit(chaos.spec(0, seconds=3)))
    leaving: subprocess.Popen[bytes] = workers[long.worker]
    (staying,) = set(workers) - {long.worker}
    stats = chaos.submit(50, seconds=0.05)
    assert long.started_at is not None
    job_left = 3 - (time.time() - long.started_at.timestamp())
    queued = Job.objects.filter(status=JobStatus.QUEUED).count()
    signalled = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    exit_status = leaving.wait(30)
    exited_after = time.monotonic() - signalled
    chaos.wait_finished(51, 60)
    long.refresh_from_db()
    others = Job.objects.exclude(pk=long.pk)
    by_worker = dict.fromkeys(workers, 0)
    for worker_id in others.values_list("worker", flat=True):
        by_worker[worker_id] += 1
    chaos.report(
        "4 sigterm",
        exit_status=exit_status,
        job_left_at_signal_s=round(job_left, 2),
        exited_after_signal_s=round(exited_after, 2),
        long_job=long.status,
        queued_at_signal=queued,
        others_by_worker=by_worker,
    )
    assert stats.errors == []
    assert exit_status == 0
    assert long.status == JobStatus.SUCCEEDED and long.attempts == 1
    assert job_left - 0.5 <= exited_after <= job_left + 3
    assert queued > 0
    assert by_worker == {long.worker: 0, staying: 50}
    assert set(others.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
