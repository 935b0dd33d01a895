"""Token and cost accounting. Pure functions over Decimal; never floats for money."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

ONE_MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)
QUANTUM = Decimal("0.000000000001")  # the ledger column's scale (12 places)


def token_cost_usd(
    prompt_tokens: int,
    completion_tokens: int,
    price_input_per_mtok: Decimal,
    price_output_per_mtok: Decimal,
    factor: Decimal = Decimal(1),
) -> Decimal:
    """The tokens' price; `factor` scales it (a batch line's `batch_price_factor`)."""
    cost = (
        (
            Decimal(prompt_tokens) * price_input_per_mtok
            + Decimal(completion_tokens) * price_output_per_mtok
        )
        * factor
        / ONE_MILLION
    )
    return cost.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def split_gpu_cost_usd(
    batch_seconds: float, gpu_hour_usd: Decimal, tokens_per_job: list[int]
) -> list[Decimal]:
    """Split one batch's GPU time across its jobs by their share of the batch's tokens."""
    if not tokens_per_job:
        return []
    total_cost = Decimal(str(batch_seconds)) * gpu_hour_usd / SECONDS_PER_HOUR
    total_tokens = sum(tokens_per_job)
    if total_tokens == 0 or total_cost == 0:
        return [Decimal(0).quantize(QUANTUM)] * len(tokens_per_job)
    return [
        (total_cost * Decimal(t) / Decimal(total_tokens)).quantize(
            QUANTUM, rounding=ROUND_HALF_EVEN
        )
        for t in tokens_per_job
    ]


def gpu_seconds_cost_usd(gpu_seconds: float, gpu_hour_usd: Decimal) -> Decimal:
    """The cost of a job's own share of GPU time (continuous batching measures it per job)."""
    cost = Decimal(str(gpu_seconds)) * gpu_hour_usd / SECONDS_PER_HOUR
    return cost.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def usd(amount: Decimal) -> str:
    """An amount as a plain decimal string, trailing zeros dropped ("0.0000012", never 1.2E-6)."""
    return f"{amount.normalize():f}"
