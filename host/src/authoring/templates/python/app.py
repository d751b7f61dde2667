"""{{name}}: a weir filter, in Python, that sets one header on every request it lets through.

componentize-py builds this module into a WebAssembly component against weir's WIT
(`wit/v0.2/filter.wit`, `weir:filter@0.2.1`, world `http-filter`): see build.sh. The
component carries its own CPython, so the standard library is there; the Python on your
machine only runs the build tool. weir calls `init` once per instance with the filter's
config as JSON, then `on_request` for each request on the routes that use the filter.
The filter declares only the request phase, so weir never calls `on_response`.

Config (JSON: the filter's `config` table in weir.toml, config.json in the tests):

    header  the name of the header to set; an existing header of that name is replaced
    value   its value

Both are required. Anything else is refused at `init` with an error that says what is
wrong, so `weir check` and weir's start-up fail and name it.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log

# componentize-py names a versioned interface's module after its package and version
# when the world sees two of that name: this is 0.2.1's `types` (0.1.2's is
# `weir_filter_types_0_1_2`).
from wit_world.imports.weir_filter_types_0_2_1 import (
    FilterInfo,
    Phases,
    RequestAction_Continue,
    ResponseAction_Continue,
)

NAME = "{{name}}"
VERSION = "0.1.0"

KEYS = ("header", "value")
# The characters HTTP allows in a header name (lowercase: weir passes names that way).
TOKEN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")

# The header (lowercase) and value this instance sets, from `init`. weir initialises each
# instance once, before any request.
HEADER = None
VALUE = None


class ConfigError(Exception):
    """A config `init` refuses; the message says what is wrong."""


def parse_config(text):
    """Returns (header, value) from the config JSON, or raises ConfigError."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"the config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError('the config must be a table, e.g. { header = "x-team", value = "payments" }')
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"unknown key `{key}` (the keys are header and value)")
    for key in KEYS:
        if key not in config:
            raise ConfigError(f"missing key `{key}`")
        if not isinstance(config[key], str):
            raise ConfigError(f"`{key}` must be a string")
    header = config["header"].lower()
    if not header or not set(header) <= TOKEN:
        raise ConfigError(f"`header` must be an HTTP header name, not \"{config['header']}\"")
    value = config["value"]
    if any(c in value for c in "\r\n\0"):
        raise ConfigError("`value` must not contain CR, LF or NUL")
    return header, value.encode("utf-8")


class Filter(exports.Filter):
    """The component's `filter` export.

    `req` (and, in `on_response`, `resp`) is a handle to what stays in weir: each method
    reads or changes one thing there, and the handle is valid for that one call only.
    """

    def init(self, config):
        global HEADER, VALUE
        try:
            HEADER, VALUE = parse_config(config)
        except ConfigError as e:
            # Errors name the filter, as weir's Rust SDK does.
            raise Err(f"{NAME}: {e}") from None
        return FilterInfo(
            name=NAME,
            version=VERSION,
            # Nothing to do on the way back: weir skips `on_response` altogether. Add
            # Phases.RESPONSE when the filter needs it.
            phases=Phases.REQUEST,
            wants_request_body=False,
            wants_response_body=False,
            may_retry=False,
        )

    def on_request(self, req):
        # `header_values` asks weir for that one header's values; logging crosses into
        # weir too: worth it here, where a client's own value is lost.
        if any(value != VALUE for value in req.header_values(HEADER)):
            log.log(log.Level.DEBUG, f"replacing the client's {HEADER} header")
        try:
            req.set_header(HEADER, VALUE)
        except Err as e:
            # weir refused the change (init checked the name and value, so it should
            # not), and counts this call's answer as invalid whatever it returns.
            log.log(log.Level.WARN, f"weir refused {HEADER}: {e.value}")
        return RequestAction_Continue()

    def on_response(self, req, resp):
        # Not called: the filter asks only for the request phase.
        return ResponseAction_Continue()
