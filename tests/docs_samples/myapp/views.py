from django.shortcuts import redirect, render

import sisy


def count_primes(request):
    """A form that starts a job, then shows that job in the admin."""
    errors = []
    if request.method == "POST":
        limit = request.POST.get("limit", "")
        spec = {
            "job_title": f"Primes below {limit}",
            "tasks": [{"count_primes": {"limit": int(limit) if limit.isdigit() else limit}}],
        }
        try:
            job = sisy.submit(spec)
        except sisy.JobSpecError as exc:
            errors = exc.messages  # one line per problem, e.g. "task 0, $.limit: ..."
        else:
            return redirect("admin:sisy_job_change", job.job_id)
    return render(request, "myapp/primes.html", {"errors": errors})
