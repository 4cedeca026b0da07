import io
import json
import logging

from medsearch.logs import setup_logging


def test_json_format_one_object_per_line_without_traceback_values():
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    log = logging.getLogger("medsearch.test")
    log.info("ingested %d series", 3)
    try:
        raise ValueError("secret-value-from-a-dataset")
    except ValueError:
        log.exception("decode failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "ingested 3 series" and lines[0]["level"] == "INFO"
    assert lines[1]["exception"] == "ValueError"
    assert "secret-value-from-a-dataset" not in stream.getvalue()


def test_setup_is_idempotent():
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    setup_logging("INFO", "text", stream=stream)
    logging.getLogger("medsearch.x").warning("once")
    assert stream.getvalue().count("once") == 1
