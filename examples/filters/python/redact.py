"""The redactor's logic: its config, and masking fields in a JSON document.

Plain Python with no weir imports, so it runs (and is unit-tested) in any CPython;
`app.py` connects it to weir's `filter` interface.
"""

import json

DEFAULT_MASK = "****"
DEFAULT_CONTENT_TYPES = ("application/json", "+json")
ON_INVALID = ("pass", "block")
CONFIG_KEYS = ("fields", "mask", "content_types", "on_invalid")
STAR = "*"
GLOBSTAR = "**"


class ConfigError(Exception):
    """The filter's config is unusable; the message says which key and why."""


class BodyError(Exception):
    """A body that should be redacted cannot be: not JSON, or JSON that will not re-encode."""


class Node:
    """One node of the trie of field paths, one path segment per step.

    `children` maps a key to the node after it; `star` is the node after `*` (any one
    key); `globstar` is the node after `**` (any run of keys, even none). A node that
    `loops` is such a `**` node: it stays active while keys go by. `leaf` means the value
    reached here is masked.
    """

    __slots__ = ("leaf", "children", "star", "globstar", "loops")

    def __init__(self, loops=False):
        self.leaf = False
        self.children = {}
        self.star = None
        self.globstar = None
        self.loops = loops

    def add(self, segments):
        """Adds the rest of one path below this node."""
        if not segments:
            self.leaf = True
            return
        head, rest = segments[0], segments[1:]
        if head == STAR:
            self.star = self.star or Node()
            self.star.add(rest)
        elif head == GLOBSTAR:
            self.globstar = self.globstar or Node(loops=True)
            self.globstar.add(rest)
        else:
            self.children.setdefault(head, Node()).add(rest)


class State:
    """A set of active `Node`s, with its moves worked out on first use (`prepare`).

    `named[key]` is the state after reading `key`; `other` is the state after any key not
    in `named` (`None` when no such key can match). Both are finite, whatever keys the
    documents hold, so a long-lived instance does not grow with its traffic.
    """

    __slots__ = ("nodes", "leaf", "ready", "named", "other", "_matcher")

    def __init__(self, matcher, nodes):
        self.nodes = nodes
        self.leaf = any(n.leaf for n in nodes)
        self.ready = False
        self.named = None
        self.other = None
        self._matcher = matcher

    def prepare(self):
        """Works out `named` and `other`."""
        keys = dict.fromkeys(k for n in self.nodes for k in n.children)
        self.named = {k: self._matcher.state(_step(self.nodes, k)) for k in keys}
        self.other = self._matcher.state(_step(self.nodes, None))
        self.ready = True


class Matcher:
    """Makes one `State` per distinct set of nodes, so moves are shared and cycles close."""

    def __init__(self):
        self.states = {}

    def state(self, nodes):
        """The state for `nodes` (closed over `**`), or `None` for no nodes."""
        nodes = _closure(nodes)
        if not nodes:
            return None
        key = frozenset(id(n) for n in nodes)
        found = self.states.get(key)
        if found is None:
            found = self.states[key] = State(self, tuple(nodes))
        return found


class Config:
    """A checked redactor config.

    - `fields`: dotted paths from the document's root (`card.number`). Arrays anywhere on
      the way, the root included, are entered element by element; `*` stands for any
      one key and `**` for any run of keys (`**.password`: every `password`, at any depth).
    - `mask`: the string that replaces each masked value.
    - `content_types`: which responses are JSON: a media type (`application/json`) or a
      structured-syntax suffix (`+json`), compared without case or parameters.
    - `on_invalid`: `pass` sends a body that cannot be redacted on unchanged; `block`
      answers 502 instead.
    """

    def __init__(self, fields, mask, content_types, on_invalid):
        self.fields = fields
        self.mask = mask
        self.content_types = content_types
        self.on_invalid = on_invalid
        root = Node()
        for path in fields:
            root.add(path.split("."))
        self.start = Matcher().state([root])


def parse_config(text):
    """Parses and checks the config JSON; raises `ConfigError` naming the problem."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be an object, not {_kind(raw)}")
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})"
        )
    return Config(
        fields=_fields(raw.get("fields")),
        mask=_mask(raw.get("mask", DEFAULT_MASK)),
        content_types=_content_types(raw.get("content_types", list(DEFAULT_CONTENT_TYPES))),
        on_invalid=_on_invalid(raw.get("on_invalid", "pass")),
    )


def _fields(value):
    if value is None:
        raise ConfigError('"fields" is required: a list of dotted paths, e.g. ["card.number"]')
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f'"fields" must be a non-empty list of dotted paths, not {_kind(value)}'
        )
    for i, path in enumerate(value):
        if not isinstance(path, str) or not path:
            raise ConfigError(f'"fields"[{i}] must be a non-empty string, not {_kind(path)}')
        if any(not segment for segment in path.split(".")):
            raise ConfigError(
                f'"fields"[{i}] = {path!r} has an empty segment (a leading, trailing or double dot)'
            )
        if path.split(".")[-1] == GLOBSTAR:
            raise ConfigError(f'"fields"[{i}] = {path!r} ends in "**"; name the field after it')
    return list(value)


def _mask(value):
    if not isinstance(value, str):
        raise ConfigError(f'"mask" must be a string, not {_kind(value)}')
    return value


def _content_types(value):
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f'"content_types" must be a non-empty list of media types, not {_kind(value)}'
        )
    patterns = []
    for i, pattern in enumerate(value):
        ok = isinstance(pattern, str) and (
            (pattern.startswith("+") and len(pattern) > 1 and "/" not in pattern)
            or (pattern.count("/") == 1 and all(pattern.split("/")))
        )
        if not ok:
            raise ConfigError(
                f'"content_types"[{i}] must be a media type like "application/json" or a '
                f'suffix like "+json", not {pattern!r}'
            )
        patterns.append(pattern.strip().lower())
    return patterns


def _on_invalid(value):
    if value not in ON_INVALID:
        raise ConfigError(f'"on_invalid" must be "pass" or "block", not {value!r}')
    return value


def _kind(value):
    """Names a JSON value's type for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}" if value else "an empty string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "an object"


def media_type(content_type):
    """The media type of a `Content-Type` value, lowercase, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(config, content_type):
    """Whether a response with this `Content-Type` (or `None`) is one to redact."""
    if content_type is None:
        return False
    mt = media_type(content_type)
    for pattern in config.content_types:
        if pattern.startswith("+"):
            if "/" in mt and mt.endswith(pattern):
                return True
        elif mt == pattern:
            return True
    return False


def redact_body(config, body):
    """Masks the configured fields in a JSON body.

    Returns `(new_body, count)`: the re-encoded body and how many values were masked, or
    `(None, 0)` if nothing matched (the body is then left exactly as it was). Raises
    `BodyError` if the body is not JSON.
    """
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise BodyError(f"body is not valid JSON: {e}") from None
    try:
        count = _walk(doc, config.start, config.mask)
    except RecursionError:
        raise BodyError("body is nested too deeply to redact") from None
    if count == 0:
        return None, 0
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError) as e:
        raise BodyError(f"redacted body cannot be encoded as JSON: {e}") from None
    return text.encode("utf-8"), count


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _walk(value, state, mask):
    """Masks what `state` selects under `value`; returns how many values it masked.

    The hot loop of the filter: kept to plain loops and type checks.
    """
    count = 0
    if type(value) is list:
        for item in value:
            if type(item) is dict or type(item) is list:
                count += _walk(item, state, mask)
        return count
    if type(value) is not dict:
        return 0
    if not state.ready:
        state.prepare()
    other = state.other
    if other is None:
        # Only the named keys can match: the rest of a big object is never read.
        moves = [(k, after) for k, after in state.named.items() if k in value]
    else:
        named = state.named
        moves = [(k, named.get(k, other)) for k in value]
    for key, after in moves:
        if after.leaf:
            value[key], masked = _mask_value(value[key], mask)
            count += masked
        else:
            count += _walk(value[key], after, mask)
    return count


def _step(nodes, key):
    """The nodes after reading `key` (`None`: a key that no node names)."""
    after = []
    for n in nodes:
        named = n.children.get(key) if key is not None else None
        if named is not None:
            after.append(named)
        if n.star is not None:
            after.append(n.star)
        if n.loops:
            after.append(n)
    return after


def _closure(nodes):
    """`nodes` plus every `**` node reachable from them without reading a key."""
    out = []
    seen = set()
    todo = list(nodes)
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        if n.globstar is not None:
            todo.append(n.globstar)
    return out


def _mask_value(value, mask):
    """The masked form of a selected value: arrays keep their shape, null stays null."""
    if value is None:
        return None, 0
    if isinstance(value, list):
        masked = [_mask_value(item, mask) for item in value]
        return [v for v, _ in masked], sum(n for _, n in masked)
    return mask, 1
