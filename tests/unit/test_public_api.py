"""The public surface: __all__ is sorted and complete; errors share one base and pickle."""

from __future__ import annotations

import pickle
from types import ModuleType

import celery_durable
from celery_durable import errors


def test_all_is_sorted_and_complete() -> None:
    public = {
        name for name, value in vars(celery_durable).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    } - {"annotations"}
    assert celery_durable.__all__ == sorted(celery_durable.__all__)
    assert public | {"__version__"} == set(celery_durable.__all__)


def test_every_error_is_a_durable_error_and_pickles() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls is errors.RunCancelled:
            # Control flow, deliberately outside the Exception tree.
            assert not issubclass(cls, Exception) and issubclass(cls, BaseException)
            continue
        assert issubclass(cls, errors.DurableError)
        assert getattr(celery_durable, name) is cls
        err = cls("boom", run_id="r1")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == "boom" and back.details == {"run_id": "r1"}
