# myapp/tasks.py
from django.tasks import task


@task
def send_welcome(user_id: int) -> str:
    ...  # noqa: PIE790
    return "sent"


@task(queue_name="emails", priority=10)
def send_digest(address: str) -> None: ...
