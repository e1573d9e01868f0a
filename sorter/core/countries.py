"""ISO 3166 country codes: plans and manifests speak alpha-2, GS1 AI 421 speaks numeric.

The core only ever sees the numeric code (a small integer), so this module is the one place
that converts between the two.
"""
from functools import lru_cache

import pycountry


@lru_cache(maxsize=None)
def _tables() -> tuple[dict[str, int], dict[int, str]]:
    a2n = {c.alpha_2: int(c.numeric) for c in pycountry.countries}
    return a2n, {n: a for a, n in a2n.items()}


def alpha2_to_numeric(alpha2: str) -> int:
    """Numeric code of an alpha-2 country; KeyError naming the code if unknown."""
    try:
        return _tables()[0][alpha2]
    except KeyError:
        raise KeyError(f"unknown ISO 3166 alpha-2 country code {alpha2!r}") from None


def numeric_to_alpha2(numeric: int) -> str | None:
    """Alpha-2 code of a numeric country, or None when ISO 3166 has no such country."""
    return _tables()[1].get(numeric)


def is_alpha2(code: str) -> bool:
    return code in _tables()[0]
