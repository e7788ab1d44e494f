import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pysupport"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import types  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_oras_retry_sleep(monkeypatch):
    # oras.decorator.retry sleeps seconds to minutes between retries of a failed request; keep
    # the retries, drop the waiting, so that a server bug fails a test quickly.
    import oras.client  # noqa: F401  (first: oras.decorator alone is a circular import)
    import oras.decorator

    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=lambda _s: None))
