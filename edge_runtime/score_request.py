"""Parse and fully validate a ``POST /v1/score`` body before anything touches a stream's history.

Accepted bodies (values in the bundle's sensor order, or keyed by sensor name)::

    {"stream": "pump-7", "readings": [[61.2, 0.52, 3.01], ...]}
    {"stream": "pump-7", "records": [{"temperature": 61.2, "vibration": 0.52, "pressure": 3.01}, ...]}

Python's ``json`` accepts ``NaN``/``Infinity`` and turns ``1e999`` into ``inf``: both are rejected, and so
are magnitudes above :data:`MAX_ABS_READING`, whose rolling statistics would overflow (``std`` squares them)
and whose features would not fit the model's float32 input.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import InputError
from edge_runtime.features import FeatureSpec

MAX_ABS_READING = 1e15


class RequestError(InputError):
    """A request the service rejects with a 4xx: ``status``, a stable ``code`` and a message saying what to send."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ScoreRequest:
    stream: str
    readings: npt.NDArray[np.float64]


def _reject_constant(name: str) -> NoReturn:
    raise RequestError(422, "non_finite_value", f"{name} is not a valid reading; send finite numbers only.")


# One decoder for the process: json.loads(..., parse_constant=...) would build a new one per request.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(body: bytes) -> Any:
    """Decode a JSON body strictly (UTF-8, no NaN/Infinity literals)."""
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "malformed_json", "The body is not UTF-8 encoded JSON.") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, "malformed_json", f"The body is not valid JSON: {exc}.") from None
    except RequestError:  # from parse_constant; a ValueError too, so it must pass before the next clause
        raise
    except ValueError:
        # After JSONDecodeError and RequestError (both ValueErrors): only Python's int-digits limit (4300) is left.
        raise RequestError(
            422, "value_out_of_range", f"A number has too many digits; readings must lie within ±{MAX_ABS_READING:g}."
        ) from None
    except RecursionError:
        raise RequestError(400, "malformed_json", "The body nests too deeply; send a flat JSON object.") from None


def _number(value: object, where: str) -> float:
    # bool is an int subclass, but `true` is never a reading.
    number: float
    if type(value) is float:
        number = value
        if not math.isfinite(number):
            raise RequestError(422, "non_finite_value", f"{where} is {value!r}; send finite numbers only.")
    elif type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            raise RequestError(422, "non_finite_value", f"{where} is too large for a float64.") from None
    else:
        shown = "null" if value is None else json.dumps(value)[:40]
        raise RequestError(422, "invalid_value", f"{where} is {shown}; expected a finite number.")
    if abs(number) > MAX_ABS_READING:
        raise RequestError(
            422, "value_out_of_range", f"{where} is {value!r}; readings must lie within ±{MAX_ABS_READING:g}."
        )
    return number


def _readings(rows: object, spec: FeatureSpec) -> list[list[float]]:
    if not isinstance(rows, list):
        raise RequestError(422, "invalid_readings", f"'readings' must be a list of rows of {spec.n_sensors} numbers.")
    n = spec.n_sensors
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise RequestError(
                422,
                "wrong_reading_length",
                f"readings[{i}] has {got}; expected {n} numbers in sensor order {list(spec.sensors)}.",
            )
        out.append(_row(row, functools.partial(_reading_position, spec, i)))
    return out


def _reading_position(spec: FeatureSpec, i: int, j: int) -> str:
    return f"readings[{i}][{j}] ({spec.sensors[j]})"


def _record_position(spec: FeatureSpec, i: int, j: int) -> str:
    return f"records[{i}].{spec.sensors[j]}"


def _row(values: Iterable[object], where: Callable[[int], str]) -> list[float]:
    """Checked floats; ``where(j)`` names value ``j`` and is only called to explain a rejection."""
    out = []
    for j, value in enumerate(values):
        # Fast path for the common case; NaN fails both comparisons, so it falls through to _number.
        if type(value) is float and -MAX_ABS_READING <= value <= MAX_ABS_READING:
            out.append(value)
        else:
            out.append(_number(value, where(j)))
    return out


def _records(records: object, spec: FeatureSpec) -> list[list[float]]:
    if not isinstance(records, list):
        raise RequestError(
            422, "invalid_records", f"'records' must be a list of objects keyed by {list(spec.sensors)}."
        )
    names = spec.sensors
    expected = set(names)
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(
                422,
                "invalid_records",
                f"records[{i}] is {type(record).__name__}; expected an object keyed by {list(names)}.",
            )
        if record.keys() != expected:
            unknown = sorted(set(record) - expected)
            missing = [s for s in names if s not in record]
            parts = []
            if unknown:
                parts.append(f"unknown sensor(s) {unknown}")
            if missing:
                parts.append(f"missing sensor(s) {missing}")
            raise RequestError(
                422, "wrong_sensors", f"records[{i}] has {' and '.join(parts)}; expected exactly {list(names)}."
            )
        out.append(_row((record[s] for s in names), functools.partial(_record_position, spec, i)))
    return out


def parse_score_request(body: bytes, spec: FeatureSpec, *, max_batch: int, max_stream_id_length: int) -> ScoreRequest:
    """Validate a whole request; raise :class:`RequestError` naming the problem and what is expected."""
    data = decode_json(body)
    if not isinstance(data, dict):
        raise RequestError(
            422, "invalid_body", 'The body must be a JSON object like {"stream": "id", "readings": [[...], ...]}.'
        )
    unknown = sorted(set(data) - {"stream", "readings", "records"})
    if unknown:
        raise RequestError(
            422, "unknown_field", f"Unknown field(s) {unknown}; send 'stream' and 'readings' or 'records'."
        )
    stream = data.get("stream")
    if stream is None:
        raise RequestError(422, "missing_stream", "Field 'stream' is missing; name the stream (e.g. the device id).")
    if not isinstance(stream, str) or not stream:
        raise RequestError(422, "invalid_stream", "Field 'stream' must be a non-empty string.")
    if len(stream) > max_stream_id_length:
        raise RequestError(
            422, "stream_id_too_long", f"Stream id has {len(stream)} characters; the limit is {max_stream_id_length}."
        )
    has_readings, has_records = "readings" in data, "records" in data
    if has_readings == has_records:
        raise RequestError(
            422,
            "missing_readings" if not has_readings else "ambiguous_readings",
            "Send exactly one of 'readings' (lists in sensor order "
            f"{list(spec.sensors)}) or 'records' (objects keyed by sensor name).",
        )
    batch = data["readings"] if has_readings else data["records"]
    if isinstance(batch, list):
        if not batch:
            raise RequestError(422, "empty_batch", "The batch is empty; send at least one reading.")
        if len(batch) > max_batch:
            raise RequestError(
                422, "batch_too_large", f"The batch has {len(batch)} readings; the limit is {max_batch} per request."
            )
    rows = _readings(batch, spec) if has_readings else _records(batch, spec)
    return ScoreRequest(stream=stream, readings=np.array(rows, dtype=np.float64))
