"""Several NATS servers in one URL, and a JetStream publish retried within a bound (against
real nats-servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
from nats.js import errors as js_errors
from nats.js.api import StreamConfig

from backbeat.embedded import NatsServer, free_port
from backbeat.secrets import with_nats_credentials
from backbeat.service.nats_connect import (
    connect_nats,
    nats_servers,
    publish_retrying,
    split_credentials,
)
from backbeat.service.settings import mask_url


def test_a_url_names_one_server_or_several() -> None:
    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers(" nats://a:4222 ,nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(ValueError, match="comma-separated"):
        nats_servers(" , ")


def test_credentials_go_to_every_server_and_are_masked() -> None:
    url = with_nats_credentials("nats://a:4222,nats://b:4222", "pulse:s3cret,x")
    assert url == "nats://pulse:s3cret%2Cx@a:4222,nats://pulse:s3cret%2Cx@b:4222"
    assert nats_servers(url)[1] == "nats://pulse:s3cret%2Cx@b:4222"
    assert "s3cret" not in mask_url(url)


@pytest.mark.integration
async def test_connects_past_a_dead_server_and_moves_on_when_its_server_dies(
    nats_factory: Callable[..., NatsServer],
) -> None:
    """The first URL answers nothing; the client takes the next. When that one stops, it
    reconnects to the third."""
    second, third = nats_factory(), nats_factory()
    url = f"nats://127.0.0.1:{free_port()},{second.url},{third.url}"
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await connect_nats(
        url,
        connect_timeout_s=10,
        dont_randomize=True,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        reconnected_cb=on_reconnect,
    )
    try:
        assert nc.connected_url is not None
        assert nc.connected_url.port == second.port
        second.kill()
        await asyncio.wait_for(reconnected.wait(), 10)
        assert nc.connected_url.port == third.port
        sub = await nc.subscribe("probe")
        await nc.publish("probe", b"x")
        assert (await sub.next_msg(timeout=5)).data == b"x"
    finally:
        await nc.close()


@pytest.mark.integration
async def test_a_publish_is_retried_until_the_stream_answers(nats_server: NatsServer) -> None:
    """No stream yet (as when a cluster is electing its leader): the publish is retried, and
    stored once the stream is there."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name, subject = "RETRIED", "retried.publish"

    async def create_later() -> None:
        await asyncio.sleep(0.3)
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))

    creating = asyncio.create_task(create_later())
    try:
        ack = await publish_retrying(
            js,
            subject,
            b"one",
            headers={"Nats-Msg-Id": "m-1"},
            attempt_timeout_s=0.2,
            within_s=10,
        )
        assert ack.stream == name
        assert not ack.duplicate
        again = await publish_retrying(
            js, subject, b"one", headers={"Nats-Msg-Id": "m-1"}, attempt_timeout_s=1, within_s=1
        )
        assert again.duplicate
        with pytest.raises(js_errors.NoStreamResponseError):
            await publish_retrying(
                js,
                "nobody.listens",
                b"x",
                headers={"Nats-Msg-Id": "m-2"},
                attempt_timeout_s=0.1,
                within_s=0.3,
            )
        with pytest.raises(ValueError, match="Nats-Msg-Id"):
            await publish_retrying(js, subject, b"x", headers={}, attempt_timeout_s=1, within_s=1)
    finally:
        await creating
        await js.delete_stream(name)
        await nc.close()


def test_credentials_leave_the_urls_for_the_client_options() -> None:
    """A cluster announces its servers without credentials: the client must hold them."""
    servers, options = split_credentials(
        ["nats://pulse:p%2Cw@a:4222", "nats://pulse:p%2Cw@b:4222", "c:4222"]
    )
    assert servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert options == {"user": "pulse", "password": "p,w"}
    assert split_credentials(["nats://tok@a:4222"]) == (["nats://a:4222"], {"token": "tok"})
    assert split_credentials(["nats://a:4222"]) == (["nats://a:4222"], {})
