"""Exceptions raised by bitpress, one per kind of bad input.

Each carries ``sqlstate``, the same SQLSTATE PostgreSQL reports for the same mistake, and
subclasses ``ValueError`` so code that catches ``ValueError`` keeps working.
"""


class BitpressError(ValueError):
    """Base class of bitpress's input errors."""

    sqlstate = "XX000"

    def __init__(self, message, sqlstate=None):
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class EmptyVectorError(BitpressError):
    """A vector with no elements."""

    sqlstate = "2202E"


class VectorTooLargeError(BitpressError):
    """More dimensions than bitpress accepts (MAX_DIM)."""

    sqlstate = "54000"


class NonFiniteError(BitpressError):
    """NaN or infinity in a vector or in thresholds."""

    sqlstate = "22P01"


class NullValueError(BitpressError):
    """A NULL inside a vector or thresholds."""

    sqlstate = "22004"


class DimensionMismatchError(BitpressError):
    """Vector and thresholds (or codebook) disagree on the number of dimensions."""

    sqlstate = "22000"


class CodeLengthMismatchError(BitpressError):
    """Two codes of different bit lengths."""

    sqlstate = "22000"


class UnsupportedKernelError(BitpressError):
    """A kernel path that this CPU or build cannot run."""

    sqlstate = "22023"


class MalformedCodebookError(BitpressError):
    """Codebook parameters that are not a valid bitpress codebook."""

    sqlstate = "22P03"


class MalformedCodeError(BitpressError):
    """A code that cannot be one of its codebook's (a RaBitQ code's factors are not numbers)."""

    sqlstate = "22P03"


class UnknownCodebookError(BitpressError):
    """No codebook of that name (or version) in bitpress.codebooks."""

    sqlstate = "42704"


class InvalidParameterError(BitpressError):
    """An argument out of range: k <= 0, oversample < 1, too few sample rows, unknown method."""

    sqlstate = "22023"


class MalformedTensorError(BitpressError):
    """Tensor-Train cores that do not make the stored tensor: ranks, sizes, checksum, gaps."""

    sqlstate = "22P03"


class UnknownTensorError(BitpressError):
    """No tensor (or model) of that name in bitpress.tt_tensors / bitpress.tt_models."""

    sqlstate = "42704"


class IndexOutOfRangeError(BitpressError):
    """A row or element index outside the tensor."""

    sqlstate = "2202E"


class MalformedLayerError(BitpressError):
    """Stored feed-forward layer parameters that are not a valid bitpress layer."""

    sqlstate = "22P03"


class UnknownLayerError(BitpressError):
    """No layer of that name in bitpress.ffn_layers."""

    sqlstate = "42704"


class ResultOutOfRangeError(BitpressError):
    """A result that is not a finite real: the computation overflows (NaN or infinity)."""

    sqlstate = "22003"


class DatatypeMismatchError(BitpressError):
    """A column of a type bitpress cannot use there (e.g. a code store's DOUBLE id column)."""

    sqlstate = "42804"


class NotNullViolationError(BitpressError):
    """A NULL where bitpress needs a value (e.g. a code store row with a code and a NULL id)."""

    sqlstate = "23502"


class UndefinedTableError(BitpressError):
    """A table that does not exist (e.g. the table a code store followed, since dropped)."""

    sqlstate = "42P01"


class UndefinedColumnError(BitpressError):
    """A column that does not exist."""

    sqlstate = "42703"


class CorruptDataError(BitpressError):
    """bitpress's own tables hold what bitpress never writes (a NULL, a bad size, a checksum
    that does not match): the message names the table, the row and the column."""

    sqlstate = "XX001"


def stored(value, table: str, key: str, column: str):
    """value, read from bitpress's own table, unless it is NULL (CorruptDataError)."""
    if value is None:
        raise CorruptDataError(f'{table} ({key}): column "{column}" is NULL')
    return value


# bp_status values of pyext/bp_core.h, in order
_BY_STATUS = {
    1: EmptyVectorError,
    2: VectorTooLargeError,
    3: NonFiniteError,
    4: NonFiniteError,
    5: DimensionMismatchError,
    6: CodeLengthMismatchError,
    7: UnsupportedKernelError,
    8: MalformedCodebookError,
    9: DimensionMismatchError,
    10: InvalidParameterError,
    11: MalformedTensorError,
    12: IndexOutOfRangeError,
    13: DimensionMismatchError,
    14: MalformedLayerError,
    15: DimensionMismatchError,
    16: InvalidParameterError,
    17: InvalidParameterError,
    18: ResultOutOfRangeError,
    19: InvalidParameterError,
    20: CodeLengthMismatchError,
    21: CodeLengthMismatchError,
    22: MalformedCodeError,
}


def _from_core(message, status, sqlstate):
    """Called by the C binding to build the exception for a bp_status."""
    return _BY_STATUS.get(status, BitpressError)(message, sqlstate)
