"""The KV's retry rule: what the client does after each kind of failed attempt."""

from __future__ import annotations

import pytest
from mt_core import errors as e
from mt_kv_contract import errors as kv
from mt_kv_contract.errors import Step, next_step

REFUSALS = [cls for cls in e.ERROR_CLASSES.values() if issubclass(cls, kv.Refused)]


def test_refusals__every_kind_the_replicas_raise_is_registered() -> None:
    raised = {kv.NotPrimary, kv.StaleEpoch, kv.UnknownShard, kv.Behind, kv.TooStale}
    assert raised | {kv.NoQuorum, kv.Moved} <= set(REFUSALS)


@pytest.mark.parametrize("cls", REFUSALS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("idempotent", [True, False], ids=["read", "write"])
def test_next_step__a_refusal_is_sent_again_even_for_a_write(
    cls: type[kv.Refused], idempotent: bool
) -> None:
    expected = Step.ROUTE_AGAIN if cls is kv.Moved else Step.AGAIN
    assert next_step(cls("refused"), idempotent=idempotent) is expected


@pytest.mark.parametrize(
    "error",
    [
        kv.Indeterminate("primary lost"),
        e.Unavailable("connection reset"),
        e.DeadlineExceeded("timed out"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_next_step__an_unknown_outcome_is_repeated_only_if_idempotent(
    error: e.MinithreadsError,
) -> None:
    assert next_step(error, idempotent=True) is Step.AGAIN
    assert next_step(error, idempotent=False) is Step.UNKNOWN


@pytest.mark.parametrize(
    "error",
    [
        kv.ConditionFailed("lost"),
        e.InvalidArgument("bad key"),
        e.FailedPrecondition("not a counter", code="not_a_counter"),
        e.Overloaded("busy"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_next_step__an_answer_is_never_retried(error: e.MinithreadsError) -> None:
    assert next_step(error, idempotent=True) is Step.ANSWER
    assert next_step(error, idempotent=False) is Step.ANSWER


def test_known__refuses_a_second_class_of_the_same_name() -> None:
    with pytest.raises(TypeError):
        e.known(type("NotPrimary", (e.Unavailable,), {}))
