"""`python -m reliability.keys`: create the chaos suite's API keys and print them as JSON.

It runs in the stack's environment, so the keys land in the stack's database and their webhook
signing secrets are sealed with the stack's secret key.
"""

from __future__ import annotations

import json
from decimal import Decimal

BUDGET_USD = "2"  # a day's budget: the traffic spends it within a few rounds
KEYS = (("admin", True, None), ("plain", False, None), ("budget", False, BUDGET_USD))


def main() -> None:
    from llmq.db import session_scope
    from llmq.keys import Limits, create_key, webhook_secret

    out = {}
    with session_scope() as session:
        for name, admin, budget in KEYS:
            limits = Limits(budget_usd=Decimal(budget), budget_period="day") if budget else Limits()
            row, plain = create_key(session, f"chaos-{name}", admin, limits)
            out[name] = {"key": plain, "secret": webhook_secret(row), "id": str(row.id),
                         "budget_usd": budget}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
