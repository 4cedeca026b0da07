"""The OpenAPI 3 description of /api/v1 and /dicomweb, as data."""

from __future__ import annotations

from functools import lru_cache

import medsearch


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(desc: str, schema: dict) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _png(desc: str) -> dict:
    return {"description": desc, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


ERRORS = {"400": _err("Bad input"), "401": _err("Missing or wrong credentials"), "403": _err("Role not allowed"),
          "404": _err("Not found"), "503": _err("A capability this endpoint needs is not available")}


def _op(summary: str, roles: list[str], ok: dict, params: list | None = None, body: dict | None = None,
        tag: str = "search") -> dict:
    op = {"summary": summary, "tags": [tag], "x-roles": roles, "security": [{"bearer": []}],
          "responses": {"200": ok, **ERRORS}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _p(name: str, where: str = "query", schema: dict | None = None, required: bool = False, desc: str = "") -> dict:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema or {"type": "string"}, "description": desc}


PAGE = [_p("offset", schema={"type": "integer", "minimum": 0}), _p("limit", schema={"type": "integer", "minimum": 1})]
FILTERS = [_p("modality", schema={"type": "string", "enum": ["CT", "MR"]}), _p("body_part"),
           _p("date_from", schema={"type": "string", "format": "date"}),
           _p("date_to", schema={"type": "string", "format": "date"})]
READ = ["radiologist", "admin", "pacs"]


@lru_cache(maxsize=1)
def spec() -> dict:
    ref = {"$ref": "#/components/schemas/SearchResponse"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "medsearch API", "version": medsearch.__version__ if hasattr(medsearch, "__version__")
                 else "0.1.0",
                 "description": "Privacy-preserving text-to-image search over a de-identified CT archive. "
                                "Studies and series are identified by pseudonyms; original identifiers come "
                                "only from the audited re-identify endpoint."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token from 'medsearch tokens create'."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "problem"], "properties": {
                    "error": {"type": "string"}, "problem": {"type": "string"},
                    "fix": {"type": "string", "nullable": True}}},
                "Result": {"type": "object", "properties": {
                    "study": {"type": "string"}, "series": {"type": "string"}, "score": {"type": "number"},
                    "components": {"type": "object"}, "matched": {"type": "array", "items": {}},
                    "unmatched": {"type": "array", "items": {}}, "key_slice": {"type": "integer"},
                    "region": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
                    "study_date": {"type": "string", "nullable": True}, "modality": {"type": "string"},
                    "body_part": {"type": "string", "nullable": True}}},
                "SearchResponse": {"type": "object", "properties": {
                    "query": {"type": "object"}, "results": {"type": "array",
                                                             "items": {"$ref": "#/components/schemas/Result"}},
                    "total": {"type": "integer"}, "took_ms": {"type": "number"}, "offset": {"type": "integer"},
                    "limit": {"type": "integer"}, "next": {"type": "string", "nullable": True}}},
                "Reidentified": {"type": "object", "properties": {
                    "study": {"type": "string"}, "study_uid": {"type": "string"}, "accession": {"type": "string"}}},
            },
        },
        "paths": {
            "/api/v1/search": {
                "get": _op("Search with an English or Chinese phrase", READ, _json("Results", ref),
                           [_p("q", required=True), *PAGE, *FILTERS]),
                "post": _op("Search (JSON body)", READ, _json("Results", ref), body={
                    "type": "object", "required": ["q"], "properties": {
                        "q": {"type": "string"}, "k": {"type": "integer"}, "offset": {"type": "integer"},
                        "filters": {"type": "object"}}}),
            },
            "/api/v1/studies/{study}": {"get": _op("Study detail (audited as a study view)", READ,
                                                   _json("Study", {"type": "object"}), [_p("study", "path")])},
            "/api/v1/series/{series}": {"get": _op("Series detail with predicted findings", READ,
                                                   _json("Series", {"type": "object"}), [_p("series", "path")])},
            "/api/v1/series/{series}/thumbnail.png": {"get": _op("Thumbnail", READ, _png("PNG"),
                                                                 [_p("series", "path")])},
            "/api/v1/series/{series}/slices/{index}.png": {"get": _op(
                "One slice, windowed", READ, _png("PNG"),
                [_p("series", "path"), _p("index", "path", {"type": "integer"}),
                 _p("window", schema={"type": "string", "enum": ["lung", "mediastinum"]}),
                 _p("size", schema={"type": "integer", "minimum": 32, "maximum": 2048})])},
            "/api/v1/series/{series}/similar": {"get": _op("Studies similar to a series", READ,
                                                           _json("Results", ref),
                                                           [_p("series", "path"), *PAGE, *FILTERS])},
            "/api/v1/similar": {"post": {**_op(
                "Studies like an uploaded series (de-identified in memory, never stored)", READ,
                _json("Results", ref), [*PAGE, *FILTERS]),
                "requestBody": {"required": True, "content": {'multipart/related; type="application/dicom"': {
                    "schema": {"type": "string", "format": "binary"}}}}}},
            "/api/v1/studies/{study}/reidentify": {"post": _op(
                "Reveal the original StudyInstanceUID and accession number (audited)", ["pacs", "admin"],
                _json("Identifiers", {"$ref": "#/components/schemas/Reidentified"}), [_p("study", "path")],
                body={"type": "object", "required": ["reason"],
                      "properties": {"reason": {"type": "string", "minLength": 5, "maxLength": 500}}},
                tag="reidentify")},
            "/api/v1/ingest/status": {"get": _op("Ingest queue and archive counts", ["admin", "pacs"],
                                                 _json("Status", {"type": "object"}), tag="ops")},
            "/api/v1/audit/events": {"get": _op(
                "Audit events, newest first", ["compliance", "admin"], _json("Events", {"type": "object"}),
                [_p("user"), _p("type"), _p("since"), _p("until"), _p("patient"), *PAGE], tag="audit")},
            "/api/v1/audit/report": {"get": _op(
                "Access report of one user", ["compliance", "admin"], _json("Report", {"type": "object"}),
                [_p("user", required=True), _p("since"), _p("until")], tag="audit")},
            "/api/v1/audit/verify": {"get": _op("Verify the audit hash chain", ["compliance", "admin"],
                                                _json("Result", {"type": "object"}), tag="audit")},
            "/api/v1/me": {"get": _op("The caller's identity and role", ["radiologist", "compliance", "admin",
                                                                           "pacs"],
                                      _json("Principal", {"type": "object"}), tag="ops")},
            "/dicomweb/studies": {"post": {
                "summary": "STOW-RS: store instances (PS3.18 10.5)", "tags": ["dicomweb"],
                "x-roles": ["pacs", "admin"], "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {'multipart/related; type="application/dicom"': {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "200": {"description": "All instances stored",
                            "content": {"application/dicom+json": {"schema": {"type": "object"}}}},
                    "202": {"description": "Some instances failed (FailedSOPSequence lists them)",
                            "content": {"application/dicom+json": {"schema": {"type": "object"}}}},
                    "400": _err("Malformed request"), "401": _err("Missing or wrong credentials"),
                    "403": _err("Role not allowed"), "409": {"description": "No instance stored",
                                                            "content": {"application/dicom+json": {
                                                                "schema": {"type": "object"}}}},
                    "415": _err("Not multipart/related; type=application/dicom")}}},
        },
    }
