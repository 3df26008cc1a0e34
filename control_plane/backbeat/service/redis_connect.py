"""One Redis client from a URL: a single server, or a Redis Cluster.

``redis://`` and ``rediss://`` (TLS) name one server, as redis-py reads them.
``redis+cluster://`` and ``rediss+cluster://`` name a Redis Cluster by one or more seed nodes,
comma-separated (``redis+cluster://user:password@10.0.0.1:6379,10.0.0.2:6379``): the client
(redis-py's ``RedisCluster``) learns the slot map from whichever seed answers, follows
``MOVED`` redirections and reloads the map after a failover.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes of a cluster URL, and the client options it carries (credentials, TLS)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    options: dict[str, Any] = {}
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, password = auth.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if parts.scheme.lower().startswith("rediss"):
        options["ssl"] = True
    seeds: list[tuple[str, int]] = []
    for node in netloc.split(","):
        host, _, port = node.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster seed {node!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, options


def redis_client(url: str, **kwargs: Any) -> Any:
    """A client for ``url``: ``RedisCluster`` for a cluster URL, else ``Redis``. ``kwargs``
    (timeouts) go to the client. The two share the commands the project uses; a script's keys
    always lie in one slot (``backbeat.core.keys``)."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **kwargs)
    seeds, options = cluster_seeds(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds], **options, **kwargs
    )


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
