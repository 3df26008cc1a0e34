"""The shipped NATS permissions, enforced by a real nats-server: each role is refused what it
must not do (forge beats, timelines or reports, read claims, touch streams) and allowed what it
needs.

The server runs ``infra/nats/production.conf`` exactly as shipped, its passwords from the
environment. A refusal is proven twice: the server answers the offender with a permissions
violation, and a subscriber allowed to see the subject never receives the message (the
offender's flush and then the observer's flush order the two connections on the server).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.api import StreamConfig

from backbeat.core import subjects
from backbeat.embedded import NatsServer
from backbeat.service.nats_permissions import (
    NatsRole,
    password_references,
    render_authorization,
    role_users,
)
from backbeat.up import COMPONENT_NATS_ROLES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "infra" / "nats" / "production.conf"
CLUSTER = "production"
WINDOW = "0" * 32
HANDOFF = f"backbeat.{CLUSTER}.pulse.handoff"
BEAT, DOWNBEAT, TIMELINE = (
    subjects.beat(CLUSTER),
    subjects.downbeat(CLUSTER),
    subjects.timeline(CLUSTER),
)
CLAIMS, REPORT = subjects.claims(CLUSTER), subjects.bar(CLUSTER, WINDOW)
PULSE, INGEST, ROLLUP, AGENT, OPERATOR = NatsRole


@dataclass
class Connection:
    role: NatsRole
    nc: Client
    errors: list[str] = field(default_factory=list)

    async def violation(self, about: str = "", within_s: float = 10.0) -> str:
        """The first permissions violation the server reported to this client (lower case:
        the client folds the server's message)."""
        async with asyncio.timeout(within_s):
            while True:
                await self.nc.flush(timeout=5)
                for error in self.errors:
                    folded = error.lower()
                    if "permissions violation" in folded and about.lower() in folded:
                        return error.lower()
                await asyncio.sleep(0.02)


Connect = Callable[[NatsRole], Awaitable[Connection]]


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[tuple[NatsServer, dict[NatsRole, str]]]:
    # nats-server parses a variable's value as configuration: one that starts with a digit
    # would be read as a number (docs/security.md says to start it with a letter).
    passwords = {role: "p" + secrets.token_hex(24) for role in NatsRole}
    env = {role.password_env: pw for role, pw in passwords.items()}
    server = NatsServer(config_file=SHIPPED, environment=env)
    server.start()
    try:
        yield server, passwords
    finally:
        server.close()


@pytest.fixture
async def connect(
    shipped_server: tuple[NatsServer, dict[NatsRole, str]],
) -> AsyncIterator[Connect]:
    server, passwords = shipped_server
    opened: list[Connection] = []

    async def open_as(role: NatsRole) -> Connection:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        url = f"nats://{role.value}:{quote(passwords[role], safe='')}@127.0.0.1:{server.port}"
        nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5)
        conn = Connection(role, nc, errors)
        opened.append(conn)
        return conn

    yield open_as
    for conn in opened:
        await conn.nc.close()


def test_the_shipped_files_are_what_the_code_renders() -> None:
    """infra/nats/*.conf are the rendered permissions, so a change to a role reaches them."""
    for cluster in ("production", "local"):
        shipped = (REPO / "infra" / "nats" / f"{cluster}.conf").read_text(encoding="utf-8")
        rendered = render_authorization(role_users(password_references(), cluster))
        assert rendered in shipped, f"run: backbeat secrets nats-config --cluster {cluster}"


async def _delivered(
    connect: Connect, publisher: NatsRole, observer: NatsRole, subject: str
) -> tuple[Connection, Connection, Subscription]:
    """``publisher`` publishes once on ``subject``, which ``observer`` subscribes to.

    The subscription has no callback, so the client queues a delivered message in its read
    loop before it reads the PONG that ends the observer's flush: once the flushes return,
    ``sub.delivered`` counts every delivery the server made before them.
    """
    watcher = await connect(observer)
    sub = await watcher.nc.subscribe(subject)
    await watcher.nc.flush(timeout=5)
    sender = await connect(publisher)
    await sender.nc.publish(subject, b'{"forged": true}')
    await sender.nc.flush(timeout=5)  # the server has handled the publish...
    await watcher.nc.flush(timeout=5)  # ...and queued any delivery before this PONG
    return sender, watcher, sub


# (offender, subject, observer allowed to see the subject)
PUBLISH_REFUSED = [
    (AGENT, BEAT, OPERATOR),
    (AGENT, DOWNBEAT, OPERATOR),
    (AGENT, TIMELINE, OPERATOR),
    (AGENT, REPORT, OPERATOR),
    (AGENT, HANDOFF, PULSE),
    (INGEST, REPORT, OPERATOR),
    (INGEST, BEAT, OPERATOR),
    (INGEST, TIMELINE, OPERATOR),
    (INGEST, CLAIMS, OPERATOR),
    (ROLLUP, BEAT, OPERATOR),
    (ROLLUP, DOWNBEAT, OPERATOR),
    (ROLLUP, TIMELINE, OPERATOR),
    (ROLLUP, CLAIMS, OPERATOR),
    (OPERATOR, BEAT, AGENT),
    (OPERATOR, CLAIMS, INGEST),
    (OPERATOR, REPORT, AGENT),
    (PULSE, REPORT, OPERATOR),
    (PULSE, CLAIMS, OPERATOR),
]


@pytest.mark.parametrize(
    ("offender", "subject", "observer"),
    PUBLISH_REFUSED,
    ids=[f"{o}-publishes-{s.rsplit('.', 1)[-1][:8]}" for o, s, _ in PUBLISH_REFUSED],
)
async def test_a_role_cannot_publish_what_is_not_its_own(
    connect: Connect, offender: NatsRole, subject: str, observer: NatsRole
) -> None:
    sender, watcher, sub = await _delivered(connect, offender, observer, subject)
    assert subject.lower() in await sender.violation()
    assert sub.delivered == 0
    assert watcher.errors == []


# (publisher, subject, observer): what each role needs, on the same server
PUBLISH_ALLOWED = [
    (PULSE, BEAT, AGENT),
    (PULSE, TIMELINE, AGENT),
    (PULSE, HANDOFF, PULSE),
    (PULSE, BEAT, INGEST),
    (AGENT, CLAIMS, INGEST),
    (ROLLUP, REPORT, AGENT),
    (ROLLUP, REPORT, INGEST),
    (PULSE, DOWNBEAT, OPERATOR),
]


@pytest.mark.parametrize(
    ("publisher", "subject", "observer"),
    PUBLISH_ALLOWED,
    ids=[f"{p}-to-{o}-{s.rsplit('.', 1)[-1][:8]}" for p, s, o in PUBLISH_ALLOWED],
)
async def test_a_role_publishes_what_it_needs(
    connect: Connect, publisher: NatsRole, subject: str, observer: NatsRole
) -> None:
    sender, watcher, sub = await _delivered(connect, publisher, observer, subject)
    # Waiting is harmless here (a refusal would never deliver) and names what went wrong.
    try:
        msg = await sub.next_msg(timeout=5)
    except nats.errors.TimeoutError:
        pytest.fail(f"no delivery: publisher {sender.errors}, observer {watcher.errors}")
    assert msg.data == b'{"forged": true}'
    assert (sender.errors, watcher.errors) == ([], [])


SUBSCRIBE_REFUSED = [
    (AGENT, CLAIMS),
    (AGENT, DOWNBEAT),
    (AGENT, HANDOFF),
    (AGENT, "_INBOX.>"),
    (AGENT, f"backbeat.{CLUSTER}.>"),
    (AGENT, ">"),
    (AGENT, "backbeat.other-cluster.beat"),
    (INGEST, HANDOFF),
    (ROLLUP, CLAIMS),
    (PULSE, CLAIMS),
]


@pytest.mark.parametrize(
    ("offender", "subject"),
    SUBSCRIBE_REFUSED,
    ids=[f"{o}-reads-{s.replace('.', '_')[-16:]}" for o, s in SUBSCRIBE_REFUSED],
)
async def test_a_role_cannot_read_what_is_not_for_it(
    connect: Connect, offender: NatsRole, subject: str
) -> None:
    reader = await connect(offender)
    await reader.nc.subscribe(subject)
    assert subject.lower() in await reader.violation()


async def test_agents_read_no_claims_of_other_agents(connect: Connect) -> None:
    """Even with the subscription refused, nothing of another agent's claim arrives."""
    spy = await connect(AGENT)
    sub = await spy.nc.subscribe(CLAIMS)
    await spy.violation()
    honest = await connect(AGENT)
    await honest.nc.publish(CLAIMS, b"{}")
    await honest.nc.flush(timeout=5)
    await spy.nc.flush(timeout=5)
    assert sub.delivered == 0


async def test_only_the_rollup_role_publishes_reports_through_jetstream(connect: Connect) -> None:
    rollup = await connect(ROLLUP)
    js = rollup.nc.jetstream(timeout=5)
    await js.add_stream(
        StreamConfig(name=subjects.bar_stream(CLUSTER), subjects=[subjects.bars_wildcard(CLUSTER)])
    )
    ack = await js.publish(REPORT, b"{}")
    assert ack.stream == subjects.bar_stream(CLUSTER)
    for role in (AGENT, INGEST, PULSE, OPERATOR):
        offender = await connect(role)
        await offender.nc.publish(subjects.bar(CLUSTER, "1" * 32), b"{}")
        assert await offender.violation("publish")
    info = await js.stream_info(subjects.bar_stream(CLUSTER))
    assert info.state.messages == 1


@pytest.mark.parametrize("role", [AGENT, INGEST, OPERATOR, PULSE])
async def test_no_role_but_the_rollup_can_delete_or_reshape_the_streams(
    connect: Connect, role: NatsRole
) -> None:
    rollup = await connect(ROLLUP)
    await rollup.nc.jetstream(timeout=5).add_stream(
        StreamConfig(name=subjects.downbeat_stream(CLUSTER), subjects=[DOWNBEAT])
    )
    offender = await connect(role)
    js = offender.nc.jetstream(timeout=2)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.delete_stream(subjects.downbeat_stream(CLUSTER))
    assert await offender.violation("$JS.API.STREAM.DELETE")
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.add_stream(StreamConfig(name="CAPTURE", subjects=[CLAIMS]))
    assert await rollup.nc.jetstream(timeout=5).stream_info(subjects.downbeat_stream(CLUSTER))


def test_compose_runs_the_shipped_users_and_each_service_its_role() -> None:
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert "./nats/local.conf:/etc/nats/local.conf:ro" in services["nats"]["volumes"]
    assert "/etc/nats/local.conf" in services["nats"]["command"]
    for role in NatsRole:
        assert role.password_env in services["nats"]["environment"]
    for name, service in services.items():
        target = service.get("build", {}).get("target")
        if target not in COMPONENT_NATS_ROLES:
            continue
        credentials = service["environment"]["BACKBEAT_SECRET_NATS_CREDENTIALS"]
        role = COMPONENT_NATS_ROLES[target]
        assert credentials.startswith(f"{role.value}:${{{role.password_env}:-"), name


def test_k8s_components_read_their_role_and_every_secret_from_files_only() -> None:
    deployments = {"pulse": PULSE, "reverb": INGEST, "reverb-trigger": ROLLUP}
    for name, role in deployments.items():
        documents = yaml.safe_load_all((REPO / "infra" / "k8s" / f"{name}.yaml").read_text())
        (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        # A variable would win over the file, and rotating the mounted Secret would change
        # nothing: secrets come from files only.
        assert "BACKBEAT_API_TOKEN" not in env, name
        assert not [v for v in env if v.startswith("BACKBEAT_SECRET_") and not v.endswith("_FILE")]
        assert env["BACKBEAT_SECRET_NATS_CREDENTIALS_FILE"]["value"].endswith(f"/nats-{role}")
