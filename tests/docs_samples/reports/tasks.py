# reports/tasks.py
from reports.models import Report


def nightly(message):
    task = message["task"]
    since = task.userdata.get("last_id", 0)
    new = list(Report.objects.filter(id__gt=since).order_by("id"))
    ...  # noqa: PIE790
    if new:
        task.userdata["last_id"] = new[-1].id
    return {"reports": len(new)}


def weekly(message):
    return {"recipients": message["task"].userdata.get("recipients", [])}


def poll_feed(message):
    return {"feed": message["task"].userdata.get("feed")}


def rebuild_index(message):
    return {"reports": Report.objects.count()}
