"""Fixtures of the Flask glue's tests."""

from __future__ import annotations

import pytest
from flask import Flask


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "test"
    return app
