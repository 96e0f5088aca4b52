"""The option declarations' generic checks (options.declare.check_declared): each end of a range, inclusive or not, a
value of 0 checked like any other, None (not given) passing."""

import re
from dataclasses import dataclass

import pytest

from gptkit.errors import GptkitError
from gptkit.options.declare import check_declared, option


@dataclass(frozen=True)
class Ranges:
    count: int | None = option(None, "At least one.", min=1)
    share: float | None = option(None, "A share held out.", min=0, below=1)
    rate: float | None = option(None, "A probability.", above=0, max=1)
    size: int | None = option(None, "At most 8.", max=8)

    def __post_init__(self):
        check_declared(self)


@pytest.mark.parametrize(
    "values, refusal",
    [
        ({"count": 0}, "--count must be at least 1, not 0"),
        ({"count": -2}, "--count must be at least 1, not -2"),
        ({"share": -0.5}, "--share must be in [0, 1), not -0.5"),
        ({"share": 1}, "--share must be in [0, 1), not 1"),
        ({"rate": 0}, "--rate must be in (0, 1], not 0"),
        ({"rate": 1.5}, "--rate must be in (0, 1], not 1.5"),
        ({"size": 9}, "--size must be at most 8, not 9"),
    ],
)
def test_a_value_past_an_end_of_its_range_is_refused(values, refusal):
    with pytest.raises(GptkitError, match=f"^{re.escape(refusal)}$"):
        Ranges(**values)


def test_the_ends_a_range_includes_and_none_pass():
    Ranges()
    Ranges(count=1, share=0, rate=1, size=8)
    Ranges(count=10**9, share=0.999, rate=1e-9, size=0)
