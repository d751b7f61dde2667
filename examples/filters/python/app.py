"""A weir filter in Python: masks configured fields in JSON response bodies.

Built into a WebAssembly component by `build.sh` (componentize-py, against weir's
`wit/filter.wit`); the logic lives in `redact.py`. See README.md for the config.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, metrics
from wit_world.imports.types import (
    FilterInfo,
    Outcome_Response,
    RequestAction_Continue,
    RequestEdit,
    Response,
    ResponseAction_Continue,
    ResponseAction_Respond,
)

import redact

NAME = "redactor"
VERSION = "0.1.0"

# This instance's config, set by `init`. weir initialises each instance once, with one
# route's config, before any request.
CONFIG = None


class Filter(exports.Filter):
    """The component's `filter` export."""

    def init(self, config):
        global CONFIG
        try:
            CONFIG = redact.parse_config(config)
        except redact.ConfigError as e:
            raise Err(str(e)) from None
        return FilterInfo(
            name=NAME,
            version=VERSION,
            wants_request_body=False,
            wants_response_body=True,
            may_retry=False,
        )

    def on_request(self, info, req):
        # Ask for an unencoded response: a gzip body cannot be read as JSON. (On a route
        # with `compression = { response = true }` weir sets its own Accept-Encoding
        # afterwards and decodes the body before this filter sees it.)
        edit = RequestEdit(
            set_headers=[],
            remove_headers=["accept-encoding"],
            path_with_query=None,
            body=None,
            try_timeout_ms=None,
        )
        return RequestAction_Continue((edit, None))

    def on_response(self, info, req, memo, outcome):
        if not isinstance(outcome, Outcome_Response):
            return ResponseAction_Continue(None)
        resp = outcome.value
        if not resp.body:
            count("skipped")
            return ResponseAction_Continue(None)
        content_type = header(resp.headers, "content-type")
        if not redact.is_json_type(CONFIG, content_type):
            log.log(
                log.Level.DEBUG,
                f"request {request_id(info, req)}: content-type {content_type!r} is not JSON; body passed on unchanged",
            )
            count("skipped")
            return ResponseAction_Continue(None)
        encoding = header(resp.headers, "content-encoding")
        try:
            if encoding is not None and encoding.strip().lower() != "identity":
                raise redact.BodyError(f"body is {encoding}-encoded")
            body, masked = redact.redact_body(CONFIG, resp.body)
        except redact.BodyError as e:
            return self.invalid(info, req, resp, str(e))
        if body is None:
            count("unchanged")
            return ResponseAction_Continue(None)
        count("redacted")
        metrics.counter_add("redactor_values_masked_total", [], masked)
        # response-edit cannot carry a body: answer with the upstream's response, new
        # body in. weir recomputes Content-Length.
        return ResponseAction_Respond(Response(status=resp.status, headers=resp.headers, body=body))

    def invalid(self, info, req, resp, why):
        """A JSON-typed body that cannot be redacted: pass it on or block it."""
        rid = request_id(info, req)
        if CONFIG.on_invalid == "pass":
            log.log(log.Level.WARN, f"request {rid}: {why}; passed on unredacted")
            count("invalid")
            return ResponseAction_Continue(None)
        log.log(log.Level.WARN, f"request {rid}: {why}; blocked (on_invalid = \"block\")")
        count("blocked")
        body = json.dumps(
            {
                "error": "redaction_failed",
                "message": f"the upstream's response could not be redacted: {why}",
                "route": info.route,
                "request_id": rid,
            }
        )
        return ResponseAction_Respond(
            Response(
                status=502,
                headers=[("content-type", b"application/json")],
                body=body.encode("utf-8") + b"\n",
            )
        )


def header(fields, name):
    """The first value of header `name` (lowercase) as text, or `None`."""
    for n, v in fields:
        if n == name:
            return v.decode("latin-1")
    return None


def request_id(info, req):
    """The request's `x-request-id`, the id weir logs and returns; `info.id` is weir's
    internal unique id, for keying state, and only a fallback here."""
    return header(req.headers, "x-request-id") or info.id


def count(result):
    """Counts one response body by what the redactor did with it."""
    metrics.counter_add("redactor_bodies_total", [("result", result)], 1)
