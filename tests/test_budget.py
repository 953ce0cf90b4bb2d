import pytest

from autoprune.core.budget import Budget
from autoprune.errors import BudgetError


@pytest.mark.parametrize(
    "text, metric, value, relative",
    [
        ("0.5flops", "flops", 0.5, True),
        ("50%flops", "flops", 0.5, True),
        ("0.6params", "params", 0.6, True),
        ("0.7latency", "latency", 0.7, True),
        ("1flops", "flops", 1.0, True),
        ("40MFLOPs", "flops", 40e6, False),
        ("40 MMACs", "flops", 40e6, False),
        ("1.5GFLOPs", "flops", 1.5e9, False),
        ("0.3Mparams", "params", 0.3e6, False),
        ("250kparams", "params", 250e3, False),
        ("2.5ms", "latency", 2.5, False),
        ("800us", "latency", 0.8, False),
        ("0.01s", "latency", 10.0, False),
    ],
)
def test_parse(text, metric, value, relative):
    budget = Budget.parse(text)
    assert budget.metric == metric
    assert budget.value == pytest.approx(value)
    assert budget.relative is relative
    assert Budget.parse(str(budget)) == budget


@pytest.mark.parametrize("text", ["", "abc", "0flops", "1.5flops", "-3ms", "0.5bananas", "flops", "0ms", "5"])
def test_parse_rejects(text):
    with pytest.raises(BudgetError, match="budget"):
        Budget.parse(text)


def test_limit():
    assert Budget.parse("0.25flops").limit(400.0) == 100.0
    assert Budget.parse("3MFLOPs").limit(400.0) == 3e6
