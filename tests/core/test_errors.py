from __future__ import annotations

import inspect

import pytest

from backbeat import errors
from backbeat.core.messages import StatusClaim


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    ]


def test_every_error_has_the_one_root() -> None:
    classes = _error_classes()
    assert len(classes) > 20
    for cls in classes:
        assert issubclass(cls, errors.BackbeatError), cls


def test_errors_are_caught_as_backbeat_or_standard_errors() -> None:
    with pytest.raises(errors.BackbeatError):
        StatusClaim.decode(b"{not json")
    with pytest.raises(ValueError, match="JSON"):
        StatusClaim.decode(b"{not json")


def test_a_fenced_write_is_not_a_follower_refusal() -> None:
    fenced = errors.FencedError(3, 7)
    assert not isinstance(fenced, errors.NotLeaderError)
    assert str(fenced) == (
        "this replica's term 3 was fenced by a newer leader's term 7; nothing was changed"
    )
