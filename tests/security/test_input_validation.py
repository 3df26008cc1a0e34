"""Hostile input gets a clear 4xx or a rejected claim, never a 500 or a stored id that an
operator's terminal would render as something else.

- ``POST /api/v1/tempo`` on a real pulse: a 400-digit integer and a 20,000-deep JSON body
  answered 500;
- claims through NATS to the ingest: agent and task ids with bidi overrides, C1 controls,
  zero-width characters or console markup were stored and republished in reports.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest

from backbeat.core import subjects
from backbeat.core.claims import accept_fast, validate_claim
from backbeat.embedded import NatsServer, RedisServer
from backbeat.service.nats_permissions import NatsRole
from tests.pulse.cluster import PulseProcess
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import ingest_for
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)

TOKEN = "in-" + "5e8a2c7f1b9d4036" * 3
CURRENT = 1235

HOSTILE_IDS = [
    "agent\u202egnp.exe",  # right-to-left override: reads as agent-exe.png
    "agent\u2066x\u2069",  # isolate
    "agent\x85x",  # C1 next-line
    "agent\x9bx",  # C1 control sequence introducer
    "agent\u200bx",  # zero-width space: two ids that look the same
    "agent\ufeffx",  # byte-order mark
    "agent\u2028x",  # line separator
    "[bold red]ALERT[/] agent",  # console markup
    "agent[link=https://example.invalid]x[/link]",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
@pytest.mark.parametrize("field", ["agent", "task"])
def test_hostile_ids_are_rejected_on_both_paths(hostile: str, field: str) -> None:
    claim = make_claim(**{field: hostile})  # type: ignore[arg-type]
    payload = claim.encode()
    verdict = validate_claim(payload, current_beat=CURRENT)
    assert verdict.reason is not None
    assert verdict.reason.value == "malformed"
    assert "_id" in verdict.detail
    assert accept_fast(payload, current_beat=CURRENT) is None


@pytest.mark.parametrize("fine", ["agent:xyz", "agent[1]", "tâche-é", "エージェント-7", "a b"])
def test_ordinary_ids_stay_valid(fine: str) -> None:
    payload = make_claim(agent=fine).encode()
    assert validate_claim(payload, current_beat=CURRENT).ok
    # The fast path leaves brackets to the full validation; whatever it accepts is valid.
    assert ("[" in fine) or accept_fast(payload, current_beat=CURRENT) is not None


@pytest.mark.integration
async def test_the_ingest_rejects_hostile_ids_from_nats(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    async with ingest_for(
        cluster_id, redis_server.url, nats_server.url_as(NatsRole.INGEST)
    ) as ingest:
        nc = await nats.connect(nats_server.url_as(NatsRole.AGENT))
        try:
            for hostile in HOSTILE_IDS:
                await nc.publish(subjects.claims(cluster_id), make_claim(agent=hostile).encode())
            await nc.publish(subjects.claims(cluster_id), make_claim().encode())
            await nc.flush()

            async def all_in() -> bool:
                totals = await ingest.store.totals()
                return totals.get("received", 0) == len(HOSTILE_IDS) + 1

            await eventually(all_in, within_s=20.0, what="every claim to be processed")
        finally:
            await nc.close()
        totals = await ingest.store.totals()
        assert totals["accepted"] == 1
        assert totals["rejected:malformed"] == len(HOSTILE_IDS)


# -- POST /api/v1/tempo on a real pulse --------------------------------------------------------


@pytest.fixture
def pulse(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> Iterator[PulseProcess]:
    process = PulseProcess(
        cluster_id,
        "p1",
        [r.url for r in redis_servers],
        nats_server.url_as(NatsRole.PULSE),
        log_dir=tmp_path,
        token=TOKEN,
    )
    process.start(timeout=30)
    try:
        yield process
    finally:
        process.close()


HOSTILE_BODIES = {
    "400-digit integer": b'{"tempo_bpm": ' + b"9" * 400 + b"}",
    "5000-digit integer": b'{"tempo_bpm": ' + b"9" * 5000 + b"}",
    "20k-deep array": b'{"tempo_bpm": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "20k-deep body": b"[" * 20_000 + b"]" * 20_000,
    "1e999": b'{"tempo_bpm": 1e999}',
    "NaN": b'{"tempo_bpm": NaN}',
    "not UTF-8": b'{"tempo_bpm": "\xff"}',
}


@pytest.mark.integration
async def test_hostile_tempo_bodies_get_a_400(pulse: PulseProcess) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for name, body in HOSTILE_BODIES.items():
            async with http.post(f"{pulse.url}/api/v1/tempo", data=body, headers=headers) as r:
                assert r.status == 400, (name, r.status, await r.text())
                assert (await r.json())["error"]["reason"] == "MALFORMED", name
        # ...and the pulse still serves an honest request afterwards.
        deadline = time.monotonic() + 30
        while True:
            async with http.post(
                f"{pulse.url}/api/v1/tempo", data=json.dumps({"tempo_bpm": 121}), headers=headers
            ) as r:
                if r.status == 200:
                    break
                assert r.status in (409, 503), await r.text()  # not leading yet
            assert time.monotonic() < deadline, "the pulse never took the honest request"
            await asyncio.sleep(0.1)
