"""Job specifications: three shapes in, one canonical form out, every problem named."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisy.exceptions import JobSpecError
from sisy.spec import (
    ENVELOPE_KEYS,
    MAX_TIME_LIMIT,
    MAX_TITLE_LENGTH,
    JobSpec,
    _envelope_surely_valid,
    _envelope_validator,
    parse,
)

JOB_ID = "1248a932-8d35-4c1e-9a6f-0f3c0e6b1a11"


def problems(spec: object) -> list[dict]:
    with pytest.raises(JobSpecError) as info:
        parse(spec)
    return info.value.as_details()


def test_title_id_and_single_key_tasks() -> None:
    job = parse(
        {
            "job_title": "Encode",
            "job_id": JOB_ID,
            "tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0}}],
        }
    )
    assert job == JobSpec(
        job_id=uuid.UUID(JOB_ID),
        title="Encode",
        tasks=(
            parse({"record": {"label": "a"}}).tasks[0],
            parse({"slow": {"seconds": 0}}).tasks[0],
        ),
    )
    assert [t.module for t in job.tasks] == ["record", "slow"]


def test_job_name_and_module_data_tasks() -> None:
    job = parse(
        {
            "job_name": "Encode",
            "tasks": [{"module": "record", "data": {"label": "a"}}, {"module": "fail"}],
        }
    )
    assert job.title == "Encode"
    assert [(t.module, t.data) for t in job.tasks] == [("record", {"label": "a"}), ("fail", {})]
    assert isinstance(job.job_id, uuid.UUID)


def test_legacy_flat_shape_keeps_key_order() -> None:
    job = parse(
        {"job_title": "Encode", "job_id": JOB_ID, "slow": {"seconds": 1}, "record": {"label": "z"}}
    )
    assert [t.module for t in job.tasks] == ["slow", "record"]
    assert job.job_id == uuid.UUID(JOB_ID)


def test_all_shapes_normalise_to_the_same_canonical_form() -> None:
    shapes = [
        {"job_title": "T", "job_id": JOB_ID, "tasks": [{"record": {"label": "a"}}]},
        {
            "job_name": "T",
            "job_id": JOB_ID,
            "tasks": [{"module": "record", "data": {"label": "a"}}],
        },
        {"job_title": "T", "job_id": JOB_ID, "record": {"label": "a"}},
    ]
    forms = [parse(shape).as_dict() for shape in shapes]
    assert forms[0] == forms[1] == forms[2]
    assert parse(forms[0]) == parse(shapes[0])


def test_json_text_is_accepted_and_nan_refused() -> None:
    assert parse('{"record": {"label": "a"}}').tasks[0].module == "record"
    assert problems('{"record": {"label": NaN}}')[0]["message"].startswith("not valid JSON")


def test_default_title_names_the_modules() -> None:
    assert parse({"tasks": [{"record": {"label": "a"}}, {"fail": {}}]}).title == "record, fail"


def test_schema_violation_names_task_and_path() -> None:
    found = problems({"tasks": [{"record": {"label": "ok"}}, {"record": {"label": 3}}]})
    assert found == [{"task": 1, "path": "$.label", "message": "3 is not of type 'string'"}]


def test_missing_required_property() -> None:
    assert problems({"tasks": [{"record": {}}]}) == [
        {"task": 0, "path": "$", "message": "'label' is a required property"}
    ]


def test_unknown_module_is_named_and_never_imported() -> None:
    found = problems({"tasks": [{"module": "os.system", "data": {}}]})
    assert found == [{"task": 0, "path": "$", "message": "unknown module 'os.system'"}]


def test_non_object_data() -> None:
    assert problems({"record": [1, 2]}) == [
        {"task": 0, "path": "$", "message": "data must be a JSON object, not an array"}
    ]


def test_bad_job_id() -> None:
    assert problems({"job_id": "not-a-uuid", "record": {"label": "a"}}) == [
        {"task": None, "path": "$.job_id", "message": "'not-a-uuid' is not a UUID"}
    ]
    assert problems({"job_id": 12, "record": {"label": "a"}})[0]["path"] == "$.job_id"


@pytest.mark.parametrize("spec", [{"job_title": "nothing"}, {"tasks": []}])
def test_empty_task_list(spec: dict) -> None:
    found = problems(spec)
    assert len(found) == 1
    assert found[0]["task"] is None


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"job_id": "x", "tasks": [{"record": {"label": 1}}, {"nope": {}}, "bad"]})
    assert [(p["task"], p["path"]) for p in found] == [
        (None, "$.job_id"),
        (0, "$.label"),
        (1, "$"),
        (2, "$"),
    ]


def test_unexpected_envelope_key_with_tasks() -> None:
    found = problems({"tasks": [{"record": {"label": "a"}}], "record": {"label": "b"}})
    assert found[0]["path"] == "$.record"


def test_conflicting_title_names() -> None:
    assert (
        problems({"job_title": "a", "job_name": "b", "record": {"label": "a"}})[0]["path"]
        == "$.job_name"
    )


def test_not_an_object() -> None:
    assert problems([1, 2])[0]["message"] == "a job specification must be a JSON object"


def test_error_is_a_django_validation_error_with_readable_messages() -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        parse({"tasks": [{"record": {"label": 3}}]})
    assert info.value.messages == ["task 0, $.label: 3 is not of type 'string'"]


def test_every_problem_carries_the_invalid_job_code() -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        parse({"tasks": [{"record": {"label": 3}}, {"nope": {}}]})
    assert [error.code for error in info.value.error_list] == ["invalid_job", "invalid_job"]


@pytest.mark.parametrize(
    ("spec", "task", "path", "fragment"),
    [
        ({"job_title": "a\x00", "record": {"label": "x"}}, None, "$.job_title", "NUL"),
        ({"tasks": [{"record": {"label": "x\x00"}}]}, 0, "$.label", "NUL"),
        (
            {"tasks": [{"record": {"label": "x", "deep": {"a b": ["\ud800"]}}}]},
            0,
            "$.deep['a b'][0]",
            "surrogate",
        ),
        ({"tasks": [{"record": {"label": "x", "k\x00": 1}}]}, 0, "$['k\\x00']", "NUL"),
    ],
)
def test_text_a_database_cannot_store_is_refused_with_its_path(
    spec: dict[str, Any], task: int | None, path: str, fragment: str
) -> None:
    with pytest.raises(JobSpecError) as caught:
        parse(spec)
    found = [p for p in caught.value.problems if fragment in p.message]
    assert [(p.task, p.path) for p in found] == [(task, path)]


# The envelope's quick check may only say "valid" where the schema does.
_envelope_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=MAX_TIME_LIMIT + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.text(min_size=MAX_TITLE_LENGTH - 1, max_size=MAX_TITLE_LENGTH + 1),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(ENVELOPE_KEYS), "record", "other"]), _envelope_values, max_size=5
    )
)
def test_the_quick_envelope_check_never_passes_what_the_schema_refuses(spec: dict) -> None:
    if _envelope_surely_valid(spec):
        assert not list(_envelope_validator.iter_errors(spec)), spec


def test_the_quick_envelope_check_passes_the_usual_shapes() -> None:
    for spec in (
        {"job_title": "t", "tasks": [{"record": {}}]},
        {"job_name": "t", "job_id": str(uuid.uuid4()), "tasks": [{"module": "m", "data": {}}]},
        {"job_title": "t", "record": {}, "max_attempts": 3, "retries": 0, "time_limit": 1.5},
    ):
        assert _envelope_surely_valid(spec)
