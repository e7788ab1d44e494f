import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pysupport"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

import imserver  # noqa: E402
from ocispec import Registry, unique_repo  # noqa: E402


@pytest.fixture(scope="session")
def server():
    """One image-manager for the whole suite; tests isolate themselves by repository name."""
    with imserver.Server() as srv:
        yield srv


@pytest.fixture(scope="session")
def reg(server) -> Registry:
    return Registry(server.url)


@pytest.fixture
def repo() -> str:
    """A fresh, unique repository name per test."""
    return unique_repo()


@pytest.fixture(autouse=True)
def _server_still_up(request):
    """After every test the shared server must still be running (no crash on any input)."""
    yield
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        assert srv.alive(), f"server process died during {request.node.name}:\n{srv.log()}"
