# myapp/receivers.py
from django.core.mail import mail_admins
from django.dispatch import receiver

from sisy.models import Job
from sisy.signals import job_finished


@receiver(job_finished, sender=Job)
def report_failures(sender, job, status, **kwargs):
    if status == "failed":
        mail_admins(f"sisy job failed: {job.job_title}", f"{job.job_id}\n\n{job.error}")
