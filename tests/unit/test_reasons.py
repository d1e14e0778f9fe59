"""The reason registry (services/common/reasons.py, the error reference's one source) against every
reason the services raise, both ways and with their statuses."""

from __future__ import annotations

import textwrap
from pathlib import Path

from services.common.reasons import BY_REASON, REASONS
from tools.docs import reasons_raised


def test_every_reason_raised_is_in_the_registry_and_every_registered_reason_is_raised():
    raised = reasons_raised()
    assert len(raised) > 40  # the scan found the services' reasons at all
    assert sorted(set(raised) - set(BY_REASON)) == [], "add them to services/common/reasons.py"
    assert sorted(set(BY_REASON) - set(raised)) == [], "no service raises them any more: remove them"


def test_each_reason_is_raised_with_a_status_the_registry_gives_it():
    wrong = [
        f"{reason} raised with {status} in {where}; registry: {[s.name for s in BY_REASON[reason].statuses]}"
        for reason, sites in reasons_raised().items()
        for where, status in sites
        if status is not None and reason in BY_REASON and status not in {s.name for s in BY_REASON[reason].statuses}
    ]
    assert wrong == []


def test_the_registry_names_each_reason_once_with_a_meaning():
    assert len(BY_REASON) == len(REASONS)
    assert all(entry.meaning and entry.statuses for entry in REASONS)


def test_the_scan_finds_reasons_however_they_are_passed(tmp_path: Path):
    (tmp_path / "module.py").write_text(
        textwrap.dedent(
            """
            import grpc
            from services.common.errors import ServiceError

            def refused(error, reason):
                return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no", reason=reason)

            def invalid(message, *, field, reason="GENERIC_REASON"):
                return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field)

            def handler(error, quick):
                reason = "ASSIGNED_REASON" if quick else "OTHER_ASSIGNED"
                raise ServiceError(grpc.StatusCode.NOT_FOUND, "gone", reason="KEYWORD_REASON")
                raise refused(error, "POSITIONAL_REASON")
                raise invalid("bad", field="x", reason=error.reason or "FALLBACK_REASON")
                log.info("not a reason: %s", "lower case", reason="Not shaped like one")
            """
        )
    )
    raised = reasons_raised(tmp_path)
    assert set(raised) == {
        "GENERIC_REASON",
        "ASSIGNED_REASON",
        "OTHER_ASSIGNED",
        "KEYWORD_REASON",
        "POSITIONAL_REASON",
        "FALLBACK_REASON",
    }
    assert {status for _, status in raised["KEYWORD_REASON"]} == {"NOT_FOUND"}
    assert {status for _, status in raised["POSITIONAL_REASON"]} == {"RESOURCE_EXHAUSTED"}
