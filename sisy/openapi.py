"""The OpenAPI 3.1 description of sisy's JSON API, served at ``openapi.json``.

Built per request from the module registry, so a project's document lists its
own modules, each with the JSON Schema its data must satisfy. Paths are
relative to where ``sisy.urls`` is included; ``servers`` says where that is.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

import sisy
from sisy import spec as specs
from sisy.models import JobStatus, JobTaskStatus
from sisy.modules import registry
from sisy.state import IDLE, IN_PROGRESS, STARTUP

_NULLABLE_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "details"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for a person."},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["task", "path", "message"],
                "properties": {
                    "task": {
                        "type": ["integer", "null"],
                        "description": "Index of the task concerned; null for the envelope.",
                    },
                    "path": {
                        "type": "string",
                        "description": "JSON path inside the task's data (or the envelope), "
                        "or the query parameter concerned.",
                    },
                    "message": {"type": "string"},
                },
            },
        },
    },
}

_JOB_SUMMARY_PROPERTIES: dict[str, Any] = {
    "job_id": {"type": "string", "format": "uuid"},
    "url": {"type": "string", "description": "This job's detail URL (a path)."},
    "title": {"type": "string"},
    "status": {"type": "string", "enum": list(JobStatus.values)},
    "channel": {"type": "string"},
    "priority": {"type": "integer", "description": "Higher starts first among queued jobs."},
    "run_after": {**_NULLABLE_TIME, "description": "Not started before this time."},
    "progress": {"type": "number", "minimum": 0, "maximum": 1},
    "task_count": {"type": "integer", "minimum": 0},
    "attempts": {"type": "integer", "minimum": 0},
    "max_attempts": {"type": "integer", "minimum": 1},
    "retries": {"type": ["integer", "null"], "description": "Overrides the modules' retries."},
    "time_limit": {"type": ["number", "null"], "description": "Overrides the modules' limits."},
    "worker": {"type": ["string", "null"]},
    "created_at": {"type": "string", "format": "date-time"},
    "started_at": _NULLABLE_TIME,
    "finished_at": _NULLABLE_TIME,
    "error": {
        "type": "string",
        "description": "Why the job failed: the traceback in a job's detail, "
        "its last line in lists.",
    },
}

_JOB_TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["position", "module", "data", "status", "progress", "result", "error"],
    "properties": {
        "position": {"type": "integer", "minimum": 0},
        "module": {"type": "string"},
        "data": {"type": "object"},
        "status": {"type": "string", "enum": list(JobTaskStatus.values)},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "progress_message": {"type": "string"},
        "retry_count": {"type": "integer", "minimum": 0},
        "result": {"description": "What the module's run() returned (any JSON)."},
        "error": {"type": "string"},
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _task_schemas() -> list[dict[str, Any]]:
    """One schema per public module, in both task shapes."""
    shapes = []
    for name, module in registry.items():
        if not module.public:
            continue
        # Its own base URI, so the schema's local references ("#/$defs/...") still resolve.
        schema = {"$id": f"urn:sisy:module:{name}", **module.schema}
        shapes.append(
            {
                "title": name,
                "type": "object",
                "required": ["module"],
                "properties": {"module": {"const": name}, "data": schema},
                "additionalProperties": False,
            }
        )
        shapes.append(
            {
                "title": f"{name} (short form)",
                "type": "object",
                "required": [name],
                "properties": {name: schema},
                "additionalProperties": False,
            }
        )
    return shapes


def document() -> dict[str, Any]:
    """The OpenAPI document, as a dict ready for JSON."""
    base = reverse("sisy:jobs").removesuffix("jobs/")
    common_errors = {
        "401": _error("No credentials, or a bad token."),
        "403": _error("A missing permission, or a failed CSRF check (session callers)."),
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    envelope = dict(specs.ENVELOPE_SCHEMA)
    envelope.pop("$schema", None)
    job_spec = {
        **envelope,
        "description": "A job specification, validated exactly as sisy.submit() validates it. "
        "The legacy shape (tasks as top-level keys) is accepted too.",
        "properties": {
            **envelope["properties"],
            "tasks": {**envelope["properties"]["tasks"], "items": {"oneOf": _task_schemas()}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sisy",
            "version": sisy.__version__,
            "description": "Submit, follow and cancel background jobs; see live workers. "
            "Authenticate with the Django session (send the CSRF token on POST) "
            "or with 'Authorization: Bearer <token>' (see the sisy_token command).",
        },
        "servers": [{"url": base}],
        "security": [{"session": []}, {"token": []}],
        "paths": {
            "/jobs/": {
                "get": {
                    "operationId": "listJobs",
                    "summary": "Jobs, newest first (permission sisy.view_job)",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "description": "Only jobs with this status; repeat for several.",
                            "schema": {"type": "string", "enum": list(JobStatus.values)},
                        },
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "page_size",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                    ],
                    "responses": {
                        "200": _ok("A page of jobs.", "JobPage"),
                        "400": _error("A bad query parameter."),
                        **common_errors,
                    },
                },
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job (permission sisy.add_job)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JobSpec")}},
                    },
                    "responses": {
                        "201": {
                            **_ok("The job, stored and queued.", "Job"),
                            "headers": {
                                "Location": {
                                    "description": "The job's URL.",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        "400": _error("Malformed JSON, limits exceeded, or an invalid job."),
                        **common_errors,
                        "409": _error("A job with this job_id already exists."),
                        "413": _error("The body is over SISY_API_MAX_BODY_SIZE."),
                        "415": _error("The body is not application/json."),
                        "503": _error("SISY_MAX_QUEUED_JOBS jobs are queued; see Retry-After."),
                    },
                },
            },
            "/jobs/{job_id}/": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job with its tasks (permission sisy.view_job)",
                    "parameters": [job_id],
                    "responses": {
                        "200": _ok("The job.", "Job"),
                        **common_errors,
                        "404": _error("No such job."),
                    },
                },
            },
            "/jobs/{job_id}/cancel/": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a queued or running job (permission sisy.change_job)",
                    "parameters": [job_id],
                    "responses": {
                        "200": _ok("The job, cancelled (a running one stops soon).", "Job"),
                        **common_errors,
                        "404": _error("No such job."),
                        "409": _error("The job has already finished."),
                    },
                },
            },
            "/jobs/{job_id}/retry/": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "Queue a failed or cancelled job again (permission sisy.change_job)",
                    "parameters": [job_id],
                    "responses": {
                        "200": _ok("The job, queued again.", "Job"),
                        **common_errors,
                        "404": _error("No such job."),
                        "409": _error("The job is not failed or cancelled."),
                    },
                },
            },
            "/workers/": {
                "get": {
                    "operationId": "listWorkers",
                    "summary": "Live workers, from their heartbeats (permission sisy.view_job)",
                    "responses": {
                        "200": _ok("Live workers.", "Workers"),
                        **common_errors,
                        "503": _error("Redis cannot be reached."),
                    },
                },
            },
            "/modules/": {
                "get": {
                    "operationId": "listModules",
                    "summary": "Modules a job may name, with schemas (permission sisy.add_job)",
                    "responses": {"200": _ok("Registered modules.", "Modules"), **common_errors},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
                "token": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": _ERROR_SCHEMA,
                "JobSpec": job_spec,
                "JobSummary": {
                    "type": "object",
                    "required": list(_JOB_SUMMARY_PROPERTIES),
                    "properties": _JOB_SUMMARY_PROPERTIES,
                },
                "Job": {
                    "type": "object",
                    "required": [*_JOB_SUMMARY_PROPERTIES, "tasks"],
                    "properties": {
                        **_JOB_SUMMARY_PROPERTIES,
                        "tasks": {"type": "array", "items": _ref("JobTask")},
                    },
                },
                "JobTask": _JOB_TASK_SCHEMA,
                "JobPage": {
                    "type": "object",
                    "required": ["count", "page", "page_size", "pages", "results"],
                    "properties": {
                        "count": {"type": "integer"},
                        "page": {"type": "integer"},
                        "page_size": {"type": "integer"},
                        "pages": {"type": "integer"},
                        "results": {"type": "array", "items": _ref("JobSummary")},
                    },
                },
                "Workers": {
                    "type": "object",
                    "required": ["count", "results"],
                    "properties": {
                        "count": {"type": "integer"},
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["worker_id", "status"],
                                "properties": {
                                    "worker_id": {"type": "string"},
                                    "status": {
                                        "type": "string",
                                        "enum": [STARTUP, IDLE, IN_PROGRESS],
                                    },
                                    "hostname": {"type": "string"},
                                    "pid": {"type": "integer"},
                                    "started_at": {"type": "string", "format": "date-time"},
                                    "last_seen": {"type": "string", "format": "date-time"},
                                    "channels": {"type": "array", "items": {"type": "string"}},
                                    "jobs_done": {"type": "integer"},
                                    "messages_dropped": {"type": "integer"},
                                    "reserved": {"type": "integer"},
                                    "job_id": {"type": ["string", "null"]},
                                    "job_title": {"type": ["string", "null"]},
                                    "attempt": {"type": "integer"},
                                    "progress": {"type": ["number", "null"]},
                                    "progress_message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Modules": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "description", "schema"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "description": {"type": "string"},
                                    "schema": {"type": "object"},
                                },
                            },
                        }
                    },
                },
            },
        },
    }
