"""Conditions are upserted metav1-style and the phase is derived from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fusionrec.operator.status import (
    ConditionType as C,
)
from fusionrec.operator.status import (
    FusionRecommenderStatus,
    Phase,
    derive_phase,
    format_time,
    parse_time,
    set_condition,
)
from fusionrec.operator.status import (
    Reason as R,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _status(*conditions, **fields) -> FusionRecommenderStatus:
    status = FusionRecommenderStatus(**fields)
    for type_, value, reason in conditions:
        set_condition(status, type_, value, reason, "", now=T0, generation=1)
    return status


def test_transition_time_moves_only_when_status_flips():
    status = FusionRecommenderStatus()
    assert set_condition(status, C.TRAINED, "False", R.TRAINING_RUNNING, "a", now=T0, generation=1)
    assert not set_condition(status, C.TRAINED, "False", R.TRAINING_RUNNING, "b", now=T0 + timedelta(1), generation=2)
    cond = status.condition(C.TRAINED)
    assert (cond.message, cond.observed_generation, cond.last_transition_time) == ("b", 2, format_time(T0))
    assert set_condition(status, C.TRAINED, "False", R.TRAINING_FAILED, "c", now=T0 + timedelta(2), generation=2)
    assert status.condition(C.TRAINED).last_transition_time == format_time(T0)  # same status, new reason
    assert set_condition(status, C.TRAINED, "True", R.TRAINING_SUCCEEDED, "d", now=T0 + timedelta(3), generation=2)
    assert status.condition(C.TRAINED).last_transition_time == format_time(T0 + timedelta(3))
    assert len(status.conditions) == 1


@pytest.mark.parametrize("status,phase", [
    (_status(), Phase.PENDING),
    (_status((C.SPEC_VALID, "False", R.INVALID_SPEC)), Phase.FAILED),
    (_status((C.SPEC_VALID, "False", R.INVALID_SPEC), (C.READY, "True", R.SERVICE_READY), current_version="v1"),
     Phase.DEGRADED),
    (_status((C.TRAINED, "False", R.TRAINING_RUNNING), (C.READY, "True", R.SERVICE_READY)), Phase.TRAINING),
    (_status((C.READY, "True", R.SERVICE_READY), candidate_version="v2", rollout_step=0), Phase.ROLLING_OUT),
    (_status((C.TRAINED, "False", R.TRAINING_FAILED), (C.READY, "True", R.SERVICE_READY), current_version="v1"),
     Phase.DEGRADED),
    (_status((C.TRAINED, "False", R.TRAINING_FAILED)), Phase.FAILED),
    (_status((C.ROLLED_OUT, "False", R.ROLLED_BACK), (C.READY, "True", R.SERVICE_READY)), Phase.DEGRADED),
    (_status((C.READY, "True", R.SERVICE_READY), candidate_version="v2", rollout_step=1, rollout_paused=True,
             conditions=[]), Phase.SERVING),
    (_status((C.ROLLED_OUT, "True", R.PROMOTED), (C.READY, "True", R.SERVICE_READY)), Phase.SERVING),
    (_status((C.READY, "False", R.SERVICE_STARTING)), Phase.ROLLING_OUT),
    (_status((C.READY, "False", R.SERVICE_UNHEALTHY)), Phase.DEGRADED),
])
def test_phase_is_derived_from_conditions(status, phase):
    assert derive_phase(status) == phase


def test_status_round_trips_through_the_wire_format():
    status = _status((C.READY, "True", R.SERVICE_READY), current_version="v1", canary_weight=10)
    body = {"status": {**status.to_patch(), "kopf": {"progress": {}}}}
    again = FusionRecommenderStatus.from_body(body)
    assert again == status and body["status"]["currentVersion"] == "v1"
    assert parse_time(format_time(T0)) == T0
