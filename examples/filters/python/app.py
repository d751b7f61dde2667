"""A weir filter in Python: masks configured fields in JSON response bodies.

Built into a WebAssembly component by `build.sh` (componentize-py, against weir's
`wit/v0.2`, `weir:filter@0.2.1`); the logic lives in `redact.py`. See README.md for the
config.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, metrics

# componentize-py names a versioned interface's module after its package and version
# when the world sees two of that name: 0.2.1's `types` here (0.1.2's, which it uses for
# `upstream-error` and `fields`, is `weir_filter_types_0_1_2`).
from wit_world.imports.weir_filter_types_0_2_1 import (
    FilterInfo,
    Phases,
    Reply,
    RequestAction_Continue,
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
    """The component's `filter` export.

    `req` and `resp` are handles to the request and response, which stay in weir: each
    method call reads (or changes) one thing there, and they are valid for the one call
    they are passed to only.
    """

    def init(self, config):
        global CONFIG
        try:
            CONFIG = redact.parse_config(config)
        except redact.ConfigError as e:
            raise Err(str(e)) from None
        return FilterInfo(
            name=NAME,
            version=VERSION,
            # on_request asks for an unencoded body; on_response redacts it.
            phases=Phases.REQUEST | Phases.RESPONSE,
            wants_request_body=False,
            wants_response_body=True,
            may_retry=False,
        )

    def on_request(self, req):
        # Ask for an unencoded response: a gzip body cannot be read as JSON. (On a route
        # with `compression = { response = true }` weir sets its own Accept-Encoding
        # afterwards and decodes the body before this filter sees it.)
        req.remove_header("accept-encoding")
        return RequestAction_Continue()

    def on_response(self, req, resp):
        if resp.error() is not None:
            # No upstream response: weir answers with its own error.
            return ResponseAction_Continue()
        # The content type first: the body of a response that is not JSON is never
        # copied into the filter.
        content_type = text(resp.header("content-type"))
        if not redact.is_json_type(CONFIG, content_type):
            log.log(
                log.Level.DEBUG,
                f"request {request_id(req)}: content-type {content_type!r} is not JSON; body passed on unchanged",
            )
            count("skipped")
            return ResponseAction_Continue()
        body = resp.body()
        if not body:
            count("skipped")
            return ResponseAction_Continue()
        encoding = text(resp.header("content-encoding"))
        try:
            if encoding is not None and encoding.strip().lower() != "identity":
                raise redact.BodyError(f"body is {encoding}-encoded")
            body, masked = redact.redact_body(CONFIG, body)
        except redact.BodyError as e:
            return self.invalid(req, str(e))
        if body is None:
            count("unchanged")
            return ResponseAction_Continue()
        count("redacted")
        metrics.counter_add("redactor_values_masked_total", [], masked)
        # The response handle cannot change the body: answer with the upstream's
        # response, new body in. weir recomputes Content-Length.
        return ResponseAction_Respond(Reply(status=resp.status(), headers=resp.headers(), body=body))

    def invalid(self, req, why):
        """A JSON-typed body that cannot be redacted: pass it on or block it."""
        rid = request_id(req)
        if CONFIG.on_invalid == "pass":
            log.log(log.Level.WARN, f"request {rid}: {why}; passed on unredacted")
            count("invalid")
            return ResponseAction_Continue()
        log.log(log.Level.WARN, f"request {rid}: {why}; blocked (on_invalid = \"block\")")
        count("blocked")
        body = json.dumps(
            {
                "error": "redaction_failed",
                "message": f"the upstream's response could not be redacted: {why}",
                "route": req.route(),
                "request_id": rid,
            }
        )
        return ResponseAction_Respond(
            Reply(
                status=502,
                headers=[("content-type", b"application/json")],
                body=body.encode("utf-8") + b"\n",
            )
        )


def text(value):
    """A header value (bytes, or `None` when absent) as text."""
    return None if value is None else value.decode("latin-1")


def request_id(req):
    """The request's `x-request-id`, the id weir logs and returns; `req.id()` is weir's
    internal unique id, for keying state, and only a fallback here."""
    return text(req.header("x-request-id")) or req.id()


def count(result):
    """Counts one response body by what the redactor did with it."""
    metrics.counter_add("redactor_bodies_total", [("result", result)], 1)
