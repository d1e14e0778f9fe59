"""Credits and their unit.

The ledger counts whole thousandths of a credit (millicredits) as integers, so a price of
0.25 is exact and sums never round. The API shows credits as exact decimal strings
("0.25", "24.75", "-1"): a string cannot be mistaken for a count of some smaller unit,
and parses exactly (Python's Decimal, Java's BigDecimal, ...). The older int64 fields
keep the whole part of the same amount, so clients written for whole credits still read
whole credits.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import grpc

from services.common.errors import ServiceError

MILLI = 1000  # millicredits per credit
PLACES = 3  # decimal places a credit amount may have


def to_milli(credits: Decimal | int | str) -> int:
    """Credits (a Decimal, an int or a decimal string) in millicredits, exactly; ValueError if finer."""
    value = Decimal(str(credits)) if not isinstance(credits, Decimal) else credits
    if not value.is_finite():
        raise ValueError(f"{credits} is not a number of credits")
    scaled = value.scaleb(PLACES)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{credits} has more than {PLACES} decimal places (the ledger counts 0.001 credits)")
    return int(scaled)


def text(milli: int) -> str:
    """Millicredits as the API shows them: an exact decimal string without trailing zeros."""
    shown = format(Decimal(milli).scaleb(-PLACES).normalize(), "f")
    return "0" if shown in ("-0", "0") else shown


def whole(milli: int) -> int:
    """The whole credits of an amount, toward zero (the older int64 fields)."""
    return milli // MILLI if milli >= 0 else -(-milli // MILLI)


def parse(value: str, field: str) -> int:
    """A decimal string from a request in millicredits, or INVALID_ARGUMENT naming `field`."""
    try:
        return to_milli(Decimal(value.strip()))
    except (InvalidOperation, ValueError) as error:
        detail = str(error) if isinstance(error, ValueError) else f"{value!r} is not a decimal number"
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'{field}: {detail}; give credits as a decimal string such as "2.5"',
            field=field,
        ) from None
