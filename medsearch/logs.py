"""Logging set-up: plain text or one JSON object per line.

The rule, for every module: **datasets, names and identifiers are never
logged.**  Log counts, pseudonyms, setting names and the operator's own paths;
never a DICOM element value, a patient name, an ID, a date of birth, a UID from
the source data or a whole dataset (``repr(ds)`` prints PHI).  The PHI-canary
tests scan the log output of ingest for planted identifiers.
"""

from __future__ import annotations

import json
import logging
import sys

_HANDLER_NAME = "medsearch"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: tracebacks can carry local values.
            data["exception"] = record.exc_info[0].__name__
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    root = logging.getLogger("medsearch")
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False
