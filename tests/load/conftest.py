"""Fixtures of the load tool's tests: their app, served on a loopback ephemeral port."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from .helpers import App


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def address(serve: Callable[[Flask], str], app: App) -> str:
    return serve(app.flask)
