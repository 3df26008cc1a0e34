"""The claim-log fold: every claim figure of a report from the log's entries (pure)."""

from __future__ import annotations

import json

from backbeat.core.claim_log import decode_promises, encode_promises, fold_entries


def _entry(
    *claims: tuple[object, ...], skipped: list[int] | None = None, **counts: int
) -> dict[str, object]:
    entry: dict[str, object] = {"m": json.dumps([v for c in claims for v in c])}
    if skipped:
        entry["x"] = json.dumps(skipped)
    entry.update({k.replace("_", ":"): v for k, v in counts.items()})
    return entry


def test_fold_counts_claims_agents_states_and_signatures() -> None:
    fold = fold_entries(
        [
            _entry(
                ("a1", "t1", 4, "review", 0, None),
                ("a1", "t1", 4, "review", 0, None),  # a duplicate, not accepted
                ("a2", "t2", 5, "done", -1, "k1"),
                skipped=[1],
                d=1,
            ),
            {b"l": b"2", b"r:bad_signature": b"1"},  # counts only, as bytes from Redis
            _entry(("a3", "t3", 6, "executing", 2, "")),  # signed without a key id
        ]
    )
    assert fold.accepted_claims == 3
    assert (fold.duplicate_claims, fold.late_claims) == (1, 2)
    assert fold.agent_ids == {"a1", "a2", "a3"}
    assert fold.claims_by_state == {"review": 1, "done": 1, "executing": 1}
    assert fold.on_time_tasks == {"t1"}  # t2 is done with beats_left < 0
    assert (fold.signed_claims, fold.key_ids) == (2, {"k1"})
    assert fold.signature_failures == 1


def test_promises_carry_over_and_expire() -> None:
    first = fold_entries([_entry(("a1", "t1", 2, "waiting", 4, None))])
    assert first.open_promises(4) == {"t1": (2, 6)}
    assert first.open_promises(7) == {}  # the deadline passed: nothing left to fulfil
    second = fold_entries([_entry(("a2", "t1", 5, "executing", 1, None))], first.open_promises(4))
    assert second.helped_tasks == {"t1"}
    assert second.open_promises(8) == {}
    again = decode_promises(encode_promises(first.open_promises(4)))
    assert again == {"t1": (2, 6)}
    assert decode_promises(None) == {}
