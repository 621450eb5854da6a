from datetime import timedelta

from django.utils import timezone

from sisy.models import Job


def purge_old_jobs(message):
    """Delete the jobs that finished more than ``userdata["days"]`` days ago."""
    task = message["task"]
    cutoff = timezone.now() - timedelta(days=task.userdata.get("days", 30))
    old = Job.objects.finished().filter(finished_at__lt=cutoff)
    count = old.count()
    old.delete()
    return {"deleted": count}
