"""{{name}}: a weir filter, in Python, that sets one header on every request it lets through.

componentize-py builds this module into a WebAssembly component against weir's WIT
(`wit/filter.wit`, world `http-filter`): see build.sh. The component carries its own
CPython, so the standard library is there; the Python on your machine only runs the build
tool. weir calls `init` once per instance with the filter's config as JSON, then
`on_request` for each request on the routes that use the filter.

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
from wit_world.imports.types import (
    FilterInfo,
    RequestAction_Continue,
    RequestEdit,
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
    """The component's `filter` export."""

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
            wants_request_body=False,
            wants_response_body=False,
            may_retry=False,
        )

    def on_request(self, info, req):
        # Logging crosses into weir: worth it here, where a client's own value is lost.
        if any(name == HEADER and value != VALUE for name, value in req.headers):
            log.log(log.Level.DEBUG, f"replacing the client's {HEADER} header")
        edit = RequestEdit(
            set_headers=[(HEADER, VALUE)],
            remove_headers=[],
            path_with_query=None,
            body=None,
            try_timeout_ms=None,
        )
        # No memo: on_response has nothing to do.
        return RequestAction_Continue((edit, None))

    def on_response(self, info, req, memo, outcome):
        # The response goes on unchanged.
        return ResponseAction_Continue(None)
