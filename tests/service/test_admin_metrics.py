"""/metrics serves the component's registry and the process-wide default registry."""

from __future__ import annotations

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from backbeat.service import AdminServer


async def test_metrics_include_the_default_registry() -> None:
    own = CollectorRegistry()
    Counter("backbeat_test_own_events", "events of this component", registry=own).inc()
    process_wide = Counter("backbeat_test_process_events", "process-wide events")
    process_wide.inc()
    try:
        async with (
            AdminServer(registry=own) as admin,
            aiohttp.ClientSession() as session,
            session.get(f"{admin.url}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
    finally:
        REGISTRY.unregister(process_wide)
    names = [family.name for family in text_string_to_metric_families(text)]
    assert "backbeat_test_own_events" in names
    assert "backbeat_test_process_events" in names
    assert len(names) == len(set(names)), "a metric family is served twice"
