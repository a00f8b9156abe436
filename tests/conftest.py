"""Every test's caches go to a folder of the test session, never the user's ~/.cache/resnetlab
(data.cache's default); the default data folder stays what it was."""

from __future__ import annotations

import os

import pytest

from resnetlab.config import default_data_dir


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "RESNETLAB_DATA")}
    os.environ["RESNETLAB_DATA"] = default_data_dir()  # computed from the real XDG_CACHE_HOME, kept
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
