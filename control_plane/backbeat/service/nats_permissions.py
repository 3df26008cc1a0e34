"""NATS users and permissions, one user per role: the boundary agents cannot cross.

Every agent holds NATS credentials, so NATS itself must refuse what a role has no business
doing. Each role gets an allow-list of subjects (everything else is denied by the server):

========  ===========================================  =====================================
role      publishes                                    subscribes
========  ===========================================  =====================================
pulse     beat, downbeat (JetStream), timeline,        beat, timeline, handoff, ``_INBOX.>``
          handoff; creates the downbeat and timeline
          streams and reads their last messages
ingest    nothing on the data plane; JetStream API     claims, beat, timeline, bar reports,
          to read the bar stream (StreamBarReports)    ``_INBOX.>``
rollup    bar reports (JetStream); trigger's durable   ``_INBOX.>``
          pull consumer on the downbeat stream
agent     claims                                       beat, timeline, bar reports
operator  JetStream API to read both streams           beat, timeline, downbeat, bar
                                                       reports, claims, ``_INBOX.>``
========  ===========================================  =====================================

``rollup`` is the trigger and the rollup function (the trigger runs it in-process, or invokes
it over HTTP or Lambda, where it connects with the same user). Agents get no ``_INBOX.>``:
they make no requests, so they cannot read other clients' replies either.

``render_authorization`` writes the ``authorization { users = [...] }`` block of a nats-server
configuration; ``infra/nats/nats-server.conf`` is its output for the shipped manifests, with
passwords taken from the server's environment (``$BACKBEAT_NATS_<ROLE>_PASSWORD``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from backbeat.core import subjects

#: A cluster id of ``None`` renders permissions for every cluster on the server (a shared test
#: server): subjects use the ``*`` token and stream names are not narrowed.
ANY_CLUSTER: Final = None

_JS: Final = "$JS.API"
_INBOX: Final = "_INBOX.>"


class NatsRole(StrEnum):
    PULSE = "pulse"
    INGEST = "ingest"
    ROLLUP = "rollup"
    AGENT = "agent"
    OPERATOR = "operator"

    @property
    def password_env(self) -> str:
        """Environment variable of the nats-server process holding this role's password."""
        return f"BACKBEAT_NATS_{self.name}_PASSWORD"


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a user may publish to and subscribe to; everything else is refused."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One ``user``/``password`` entry; ``permissions=None`` allows everything (tests only)."""

    name: str
    password: str = field(repr=False)
    permissions: Permissions | None


@dataclass(frozen=True, slots=True)
class _Names:
    """The subjects and stream names of one cluster (or of any cluster)."""

    beat: str
    downbeat: str
    timeline: str
    claims: str
    bars: str
    handoff: str
    downbeat_stream: str
    timeline_stream: str
    bar_stream: str

    @classmethod
    def of(cls, cluster_id: str | None) -> _Names:
        token = "*" if cluster_id is None else subjects.check_cluster_id(cluster_id)
        return cls(
            beat=subjects.beat(token),
            downbeat=subjects.downbeat(token),
            timeline=subjects.timeline(token),
            claims=subjects.claims(token),
            bars=subjects.bars_wildcard(token),
            handoff=subjects.pulse_handoff(token),
            downbeat_stream="*" if cluster_id is None else subjects.downbeat_stream(cluster_id),
            timeline_stream="*" if cluster_id is None else subjects.timeline_stream(cluster_id),
            bar_stream="*" if cluster_id is None else subjects.bar_stream(cluster_id),
        )


def _read_stream_api(stream: str) -> tuple[str, ...]:
    """Look up a stream and run ephemeral (ordered) consumers on it: read, never write."""
    return (
        f"{_JS}.STREAM.NAMES",
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.INFO.{stream}.>",
        f"{_JS}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",  # flow-control replies of push consumers
    )


def _pulse(n: _Names) -> Permissions:
    d, t = n.downbeat_stream, n.timeline_stream
    return Permissions(
        publish=(
            n.beat, n.downbeat, n.timeline, n.handoff,
            f"{_JS}.STREAM.INFO.{d}", f"{_JS}.STREAM.CREATE.{d}", f"{_JS}.STREAM.UPDATE.{d}",
            f"{_JS}.STREAM.INFO.{t}", f"{_JS}.STREAM.CREATE.{t}", f"{_JS}.STREAM.UPDATE.{t}",
            # the floor of the grid a new leader reads: the last timeline record and downbeat
            f"{_JS}.STREAM.MSG.GET.{d}", f"{_JS}.STREAM.MSG.GET.{t}",
        ),
        subscribe=(n.beat, n.timeline, n.handoff, _INBOX),
    )  # fmt: skip


def _ingest(n: _Names) -> Permissions:
    return Permissions(
        publish=(*_read_stream_api(n.bar_stream), f"{_JS}.STREAM.CREATE.{n.bar_stream}"),
        subscribe=(n.claims, n.beat, n.timeline, n.bars, _INBOX),
    )


def _rollup(n: _Names) -> Permissions:
    d, b = n.downbeat_stream, n.bar_stream
    return Permissions(
        publish=(
            n.bars,
            f"{_JS}.STREAM.NAMES",
            f"{_JS}.STREAM.INFO.{d}", f"{_JS}.STREAM.CREATE.{d}",
            f"{_JS}.STREAM.INFO.{b}", f"{_JS}.STREAM.CREATE.{b}",
            f"{_JS}.STREAM.MSG.GET.{b}", f"{_JS}.DIRECT.GET.{b}", f"{_JS}.DIRECT.GET.{b}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{d}.>", f"{_JS}.CONSUMER.CREATE.{d}.>",
            f"{_JS}.CONSUMER.INFO.{d}.>", f"{_JS}.CONSUMER.MSG.NEXT.{d}.>",
            f"$JS.ACK.{d}.>",
        ),
        subscribe=(_INBOX,),
    )  # fmt: skip


def _agent(n: _Names) -> Permissions:
    return Permissions(publish=(n.claims,), subscribe=(n.beat, n.timeline, n.bars))


def _operator(n: _Names) -> Permissions:
    return Permissions(
        publish=(
            *_read_stream_api(n.bar_stream),
            *_read_stream_api(n.downbeat_stream)[1:],
            f"{_JS}.STREAM.MSG.GET.{n.bar_stream}",
        ),
        subscribe=(n.beat, n.timeline, n.downbeat, n.bars, n.claims, _INBOX),
    )


_ROLES: Final = {
    NatsRole.PULSE: _pulse,
    NatsRole.INGEST: _ingest,
    NatsRole.ROLLUP: _rollup,
    NatsRole.AGENT: _agent,
    NatsRole.OPERATOR: _operator,
}


def role_permissions(role: NatsRole, cluster_id: str | None) -> Permissions:
    """What ``role`` may publish and subscribe to in ``cluster_id`` (``None``: any cluster)."""
    return _ROLES[role](_Names.of(cluster_id))


def role_users(passwords: Mapping[NatsRole, str], cluster_id: str | None) -> list[NatsUser]:
    """One user per role in ``passwords``, named after the role."""
    return [
        NatsUser(role.value, passwords[role], role_permissions(role, cluster_id))
        for role in NatsRole
        if role in passwords
    ]


def role_credentials(role: NatsRole, password: str) -> str:
    """The ``nats_credentials`` secret of a component of ``role`` (``user:password``)."""
    return f"{role.value}:{password}"


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(json.dumps(item) for item in items)


def _render_password(password: str) -> str:
    # ``$NAME`` is a nats-server variable (resolved from the server's environment).
    return password if password.startswith("$") else json.dumps(password)


def _render_user(user: NatsUser) -> str:
    head = f"{{ user: {json.dumps(user.name)}, password: {_render_password(user.password)}"
    p = user.permissions
    if p is None:
        return head + " }"
    return (
        f"{head},\n"
        f"      permissions: {{\n"
        f"        publish: {{ allow: [{_quoted(p.publish)}] }}\n"
        f"        subscribe: {{ allow: [{_quoted(p.subscribe)}] }}\n"
        f"      }} }}"
    )


def render_authorization(users: Iterable[NatsUser]) -> str:
    """The ``authorization`` block of a nats-server configuration for ``users``."""
    body = ",\n".join(f"    {_render_user(user)}" for user in users)
    return f"authorization {{\n  users = [\n{body}\n  ]\n}}\n"


def password_references(roles: Iterable[NatsRole] = NatsRole) -> dict[NatsRole, str]:
    """Passwords as references to the server's environment, for a configuration file that
    holds no secret (``$BACKBEAT_NATS_PULSE_PASSWORD``, ...)."""
    return {role: f"${role.password_env}" for role in roles}
