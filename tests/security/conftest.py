"""Fixtures of the secrets tests: the Vault double."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.security.vault_double import VaultDouble


@pytest.fixture
async def vault() -> AsyncIterator[VaultDouble]:
    double = VaultDouble()
    await double.start()
    try:
        yield double
    finally:
        await double.close()
