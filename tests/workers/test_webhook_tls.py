"""The webhook sender builds its verifying TLS context once per process, not per delivery."""

from __future__ import annotations

import ssl

from llmq import ssrf
from llmq.settings import get_settings
from tests.tenancy_helpers import Receiver
from workers import webhooks


def test_deliveries_share_one_tls_context(environment, monkeypatch):
    """Loading the CA bundle costs tens of ms of CPU; paid per delivery, it caps a sender at a
    few deliveries a second."""
    built = []
    original = ssl.create_default_context

    def counting(*args, **kwargs):
        built.append(args or kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    receiver = Receiver()
    try:
        settings = get_settings()
        target = ssrf.check_url(receiver.url, settings)
        results = [webhooks.send(target, f"msg_{i}", "{}", "whsec_" + "a" * 32, settings)
                   for i in range(3)]  # fmt: skip
    finally:
        receiver.close()
    assert [r.status_code for r in results] == [200, 200, 200]
    assert len(receiver.requests) == 3
    assert len(built) <= 1
