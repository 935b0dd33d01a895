from decimal import Decimal

from llmq.ledger import split_gpu_cost_usd, token_cost_usd


def test_token_cost_is_exact_decimal():
    cost = token_cost_usd(31, 8, Decimal("0.02"), Decimal("0.06"))
    assert cost == Decimal("0.00000110")
    assert isinstance(cost, Decimal)


def test_a_price_factor_scales_the_token_cost():
    full = token_cost_usd(31, 8, Decimal("0.02"), Decimal("0.06"))
    assert token_cost_usd(31, 8, Decimal("0.02"), Decimal("0.06"), Decimal("0.5")) == full / 2


def test_gpu_cost_split_by_token_share():
    # one hour-priced GPU at $3.60/h for 10 s costs $0.01 in all
    parts = split_gpu_cost_usd(10.0, Decimal("3.6"), [30, 10, 60])
    assert parts == [Decimal("0.003"), Decimal("0.001"), Decimal("0.006")]
    assert sum(parts) == Decimal("0.01")


def test_gpu_cost_zero_cases():
    assert split_gpu_cost_usd(5.0, Decimal(0), [1, 2]) == [Decimal(0), Decimal(0)]
    assert split_gpu_cost_usd(5.0, Decimal(1), []) == []
