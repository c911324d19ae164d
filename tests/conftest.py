"""Session hooks. The tiny checkpoint that many tests share (conftest_models.tiny_model_path, ~2.5 minutes of one
core) starts building in the background as soon as collection has chosen a test that needs it, instead of when that
test first asks for it: the tests before it run beside the build on the other core."""

from __future__ import annotations

import conftest_models


def pytest_collection_finish(session) -> None:
    if any("tiny_model_path" in item.fixturenames for item in session.items):
        conftest_models.start_tiny_model_build(session.config._tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session) -> None:
    conftest_models.stop_tiny_model_builds()
