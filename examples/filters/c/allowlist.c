// allowlist: a weir filter, in C, that drops every request header not on a configured
// list.
//
// Config (JSON, from the filter's `config` table in weir.toml):
//   allow           list of header names kept as they are (case-insensitive)
//   allow_prefixes  list of name prefixes; a header whose name starts with one is kept
//   log_dropped     bool, default false: log the names (never the values) dropped from
//                   each request, at info level
// At least one name or prefix is required. Anything else is refused at `init`, with an
// error that names the key and what is wrong with it, so `weir check` and start-up fail.
//
// Every request that loses headers adds the number of header fields it lost to the
// counter `weir_filter_allowlist_dropped_headers_total` (weir adds the prefix and the
// `route` and `filter` labels).
//
// It is built against `weir:filter@0.2.1` (wit/v0.2): the request stays in weir, and
// `on-request` gets a handle to it. The filter reads the header names, and the values
// of only the headers it drops (to count them), and removes those through the handle.
// It asks for the request phase only, so weir never calls its `on-response`.
//
// Memory and handles: what a call into weir returns (a string, a list) is malloc'd in
// this module, and the filter frees it; what the filter passes to weir stays its own.
// `init` frees the config string it is handed; what it returns is malloc'd here and freed
// by the generated post-return function after weir has copied it out. Each export drops
// the borrowed handles it is given (`*_drop_borrow`) before it returns: the component
// model traps a call that returns with a borrow still held, and wit-bindgen's C bindings
// leave that to the filter. The config lives from `init` to the next `init` (weir calls
// it once per instance).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_filter.h"

#define FILTER_NAME "allowlist"
#define FILTER_VERSION "0.1.0"
#define DROPPED_METRIC "allowlist_dropped_headers_total"

// wit-bindgen names weir's types and calls after their package and its version:
// `weir_filter_0_2_1_*` for 0.2's `types` and `filter`, `weir_filter_0_1_2_*` for `log`
// and `metrics`, which 0.2 imports unchanged from 0.1.2.
typedef weir_filter_0_2_1_types_borrow_request_t request_t;
typedef weir_filter_0_2_1_types_borrow_response_t response_t;
typedef exports_weir_filter_0_2_1_filter_request_action_t request_action_t;
typedef exports_weir_filter_0_2_1_filter_response_action_t response_action_t;

// === growable byte buffer ===

// A growable byte string: used for decoded JSON strings and for messages.
typedef struct {
  uint8_t *ptr;
  size_t len;
  size_t cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
  if (b->cap - b->len >= extra) return;
  size_t cap = b->cap ? b->cap : 32;
  while (cap - b->len < extra) cap *= 2;
  uint8_t *p = realloc(b->ptr, cap);
  if (!p) abort();
  b->ptr = p;
  b->cap = cap;
}

static void buf_push(buf_t *b, uint8_t c) {
  buf_reserve(b, 1);
  b->ptr[b->len++] = c;
}

static void buf_append(buf_t *b, const void *s, size_t n) {
  if (n == 0) return;
  buf_reserve(b, n);
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_put_uint(buf_t *b, size_t n) {
  char digits[24];
  size_t i = sizeof digits;
  do {
    digits[--i] = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  buf_append(b, digits + i, sizeof digits - i);
}

// Appends `s` as a JSON-style quoted string, so control characters and quotes in a
// message stay readable.
static void buf_put_quoted(buf_t *b, const uint8_t *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  buf_push(b, '"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\') {
      buf_push(b, '\\');
      buf_push(b, c);
    } else if (c < 0x20 || c == 0x7f) {
      buf_puts(b, "\\u00");
      buf_push(b, (uint8_t)hex[c >> 4]);
      buf_push(b, (uint8_t)hex[c & 15]);
    } else {
      buf_push(b, c);
    }
  }
  buf_push(b, '"');
}

// Hands the buffer's bytes over as a component-model string (malloc'd, possibly empty).
static http_filter_string_t buf_into_string(buf_t *b) {
  http_filter_string_t s = {b->ptr, b->len};
  if (b->len == 0) {
    free(b->ptr);
    s.ptr = NULL;
  }
  *b = (buf_t){0};
  return s;
}

// === header names ===

static uint8_t ascii_lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

// Whether `c` may appear in an HTTP field name (RFC 9110 `tchar`).
static bool is_tchar(uint8_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

// Whether the first `n` bytes of `name` equal the (lowercase) `lower`, ignoring case.
static bool eq_ignore_case(const uint8_t *name, const uint8_t *lower, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (ascii_lower(name[i]) != lower[i]) return false;
  }
  return true;
}

// A lowercase header name or prefix from the config.
typedef struct {
  uint8_t *ptr;
  size_t len;
} name_t;

typedef struct {
  name_t *items;
  size_t len;
} name_list_t;

static void name_list_free(name_list_t *l) {
  for (size_t i = 0; i < l->len; i++) free(l->items[i].ptr);
  free(l->items);
  *l = (name_list_t){0};
}

// === config ===

typedef struct {
  name_list_t allow;
  name_list_t prefixes;
  bool log_dropped;
} config_t;

static config_t config;

static void config_free(config_t *c) {
  name_list_free(&c->allow);
  name_list_free(&c->prefixes);
  c->log_dropped = false;
}

// Whether a request header called `name` (`len` bytes) is kept.
static bool config_allows(const config_t *c, const uint8_t *name, size_t len) {
  for (size_t i = 0; i < c->allow.len; i++) {
    const name_t *a = &c->allow.items[i];
    if (a->len == len && eq_ignore_case(name, a->ptr, len)) return true;
  }
  for (size_t i = 0; i < c->prefixes.len; i++) {
    const name_t *p = &c->prefixes.items[i];
    if (p->len <= len && eq_ignore_case(name, p->ptr, p->len)) return true;
  }
  return false;
}

// === a small JSON reader for the config's shape ===
//
// weir hands `init` the config as JSON text. This reader understands just what the
// config can hold: one object whose values are arrays of strings or booleans. It decodes
// every string escape (including \u surrogate pairs) and reports anything else as an
// error that says where and what it found. It never recurses, so no input can exhaust
// the stack.

typedef struct {
  const uint8_t *p;
  const uint8_t *end;
  const uint8_t *start;
  buf_t err;  // empty until something goes wrong
} reader_t;

static bool failed(const reader_t *r) { return r->err.len > 0; }

static void skip_ws(reader_t *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

// Records a syntax error at the current position.
static void syntax_error(reader_t *r, const char *what) {
  if (failed(r)) return;
  buf_puts(&r->err, "config is not valid JSON: ");
  buf_puts(&r->err, what);
  buf_puts(&r->err, " at byte ");
  buf_put_uint(&r->err, (size_t)(r->p - r->start));
}

// Whether the text at the current position starts with `word`.
static bool at_word(const reader_t *r, const char *word) {
  size_t n = strlen(word);
  return (size_t)(r->end - r->p) >= n && memcmp(r->p, word, n) == 0;
}

// What kind of JSON value starts at the current position, for error messages.
static const char *kind_here(const reader_t *r) {
  if (r->p >= r->end) return "nothing";
  if (at_word(r, "true") || at_word(r, "false")) return "a boolean";
  if (at_word(r, "null")) return "null";
  switch (*r->p) {
    case '"': return "a string";
    case '[': return "a list";
    case '{': return "a table";
    default:
      if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9')) return "a number";
      return "something that is not JSON";
  }
}

static bool consume(reader_t *r, uint8_t c) {
  skip_ws(r);
  if (r->p < r->end && *r->p == c) {
    r->p++;
    return true;
  }
  return false;
}

static bool consume_word(reader_t *r, const char *word) {
  if (!at_word(r, word)) return false;
  r->p += strlen(word);
  return true;
}

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads the four hex digits of a \u escape.
static bool read_hex4(reader_t *r, uint32_t *out) {
  if (r->end - r->p < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value(r->p[i]);
    if (h < 0) return false;
    v = (v << 4) | (uint32_t)h;
  }
  r->p += 4;
  *out = v;
  return true;
}

static void put_utf8(buf_t *b, uint32_t cp) {
  if (cp < 0x80) {
    buf_push(b, (uint8_t)cp);
  } else if (cp < 0x800) {
    buf_push(b, (uint8_t)(0xc0 | (cp >> 6)));
    buf_push(b, (uint8_t)(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    buf_push(b, (uint8_t)(0xe0 | (cp >> 12)));
    buf_push(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
    buf_push(b, (uint8_t)(0x80 | (cp & 0x3f)));
  } else {
    buf_push(b, (uint8_t)(0xf0 | (cp >> 18)));
    buf_push(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3f)));
    buf_push(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
    buf_push(b, (uint8_t)(0x80 | (cp & 0x3f)));
  }
}

// Reads a JSON string (the opening quote is next) into `out`, decoding escapes.
static bool read_string(reader_t *r, buf_t *out) {
  skip_ws(r);
  if (r->p >= r->end || *r->p != '"') {
    syntax_error(r, "expected a string");
    return false;
  }
  r->p++;
  while (r->p < r->end) {
    uint8_t c = *r->p++;
    if (c == '"') return true;
    if (c < 0x20) {
      r->p--;
      syntax_error(r, "control character in a string");
      return false;
    }
    if (c != '\\') {
      buf_push(out, c);
      continue;
    }
    if (r->p >= r->end) break;
    uint8_t e = *r->p++;
    switch (e) {
      case '"': buf_push(out, '"'); break;
      case '\\': buf_push(out, '\\'); break;
      case '/': buf_push(out, '/'); break;
      case 'b': buf_push(out, '\b'); break;
      case 'f': buf_push(out, '\f'); break;
      case 'n': buf_push(out, '\n'); break;
      case 'r': buf_push(out, '\r'); break;
      case 't': buf_push(out, '\t'); break;
      case 'u': {
        uint32_t cp;
        if (!read_hex4(r, &cp)) {
          syntax_error(r, "bad \\u escape");
          return false;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
          uint32_t low;
          if (!consume_word(r, "\\u") || !read_hex4(r, &low) || low < 0xdc00 || low > 0xdfff) {
            syntax_error(r, "unpaired surrogate in a \\u escape");
            return false;
          }
          cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
          syntax_error(r, "unpaired surrogate in a \\u escape");
          return false;
        }
        put_utf8(out, cp);
        break;
      }
      default:
        r->p--;
        syntax_error(r, "unknown escape in a string");
        return false;
    }
  }
  syntax_error(r, "unterminated string");
  return false;
}

// Reports a value of the wrong type: "`KEY` must be WANT, not KIND".
static void type_error(reader_t *r, const char *key, const char *want) {
  buf_puts(&r->err, "`");
  buf_puts(&r->err, key);
  buf_puts(&r->err, "` must be ");
  buf_puts(&r->err, want);
  buf_puts(&r->err, ", not ");
  buf_puts(&r->err, kind_here(r));
}

// Appends "`KEY[INDEX]`", naming one item of a list in an error.
static void put_item(buf_t *b, const char *key, size_t index) {
  buf_puts(b, "`");
  buf_puts(b, key);
  buf_puts(b, "[");
  buf_put_uint(b, index);
  buf_puts(b, "]`");
}

// Reads `key`'s value: a list of header names or prefixes, checked and lowercased.
static void read_name_list(reader_t *r, const char *key, const char *what, name_list_t *out) {
  skip_ws(r);
  if (r->p >= r->end || *r->p != '[') {
    type_error(r, key, "a list of strings");
    return;
  }
  r->p++;
  if (consume(r, ']')) return;
  size_t cap = 0;
  for (size_t index = 0;; index++) {
    skip_ws(r);
    if (r->p >= r->end || *r->p != '"') {
      if (r->p < r->end && *r->p != ']') {
        put_item(&r->err, key, index);
        buf_puts(&r->err, " must be a string (");
        buf_puts(&r->err, what);
        buf_puts(&r->err, "), not ");
        buf_puts(&r->err, kind_here(r));
      } else {
        syntax_error(r, "expected a string");
      }
      return;
    }
    buf_t s = {0};
    if (!read_string(r, &s)) {
      free(s.ptr);
      return;
    }
    const char *problem = NULL;
    if (s.len == 0) problem = "is empty";
    for (size_t i = 0; i < s.len && !problem; i++) {
      if (!is_tchar(s.ptr[i])) problem = "has a character HTTP does not allow in a header name";
    }
    if (problem) {
      put_item(&r->err, key, index);
      buf_puts(&r->err, " ");
      buf_put_quoted(&r->err, s.ptr, s.len);
      buf_puts(&r->err, " ");
      buf_puts(&r->err, problem);
      if (s.len) buf_puts(&r->err, " (allowed: letters, digits and !#$%&'*+-.^_`|~)");
      free(s.ptr);
      return;
    }
    for (size_t i = 0; i < s.len; i++) s.ptr[i] = ascii_lower(s.ptr[i]);
    if (out->len == cap) {
      cap = cap ? cap * 2 : 8;
      name_t *items = realloc(out->items, cap * sizeof *items);
      if (!items) abort();
      out->items = items;
    }
    out->items[out->len++] = (name_t){s.ptr, s.len};
    if (consume(r, ',')) continue;
    if (consume(r, ']')) return;
    syntax_error(r, "expected `,` or `]` in a list");
    return;
  }
}

static void read_bool(reader_t *r, const char *key, bool *out) {
  skip_ws(r);
  if (consume_word(r, "true")) {
    *out = true;
  } else if (consume_word(r, "false")) {
    *out = false;
  } else {
    type_error(r, key, "true or false");
  }
}

// The config's keys, in the order the error for an unknown key lists them.
enum { KEY_ALLOW, KEY_ALLOW_PREFIXES, KEY_LOG_DROPPED, KEY_COUNT };
static const char *const KEYS[KEY_COUNT] = {"allow", "allow_prefixes", "log_dropped"};

static int key_index(const buf_t *name) {
  for (int k = 0; k < KEY_COUNT; k++) {
    if (strlen(KEYS[k]) == name->len && memcmp(KEYS[k], name->ptr, name->len) == 0) return k;
  }
  return -1;
}

// Parses and checks the whole config; on failure `r->err` says why.
static void read_config(reader_t *r, config_t *c) {
  skip_ws(r);
  // weir sends `{}` when there is no config; `null` reads the same.
  if (!consume_word(r, "null")) {
    if (!consume(r, '{')) {
      buf_puts(&r->err, "the config must be a table, not ");
      buf_puts(&r->err, kind_here(r));
      return;
    }
    bool seen[KEY_COUNT] = {false};
    if (!consume(r, '}')) {
      for (;;) {
        buf_t name = {0};
        if (!read_string(r, &name)) {
          free(name.ptr);
          return;
        }
        int k = key_index(&name);
        if (k < 0 || seen[k]) {
          buf_puts(&r->err, k < 0 ? "unknown key " : "key given twice: ");
          buf_put_quoted(&r->err, name.ptr, name.len);
          if (k < 0) buf_puts(&r->err, " (the keys are allow, allow_prefixes and log_dropped)");
          free(name.ptr);
          return;
        }
        free(name.ptr);
        seen[k] = true;
        if (!consume(r, ':')) {
          syntax_error(r, "expected `:` after a key");
          return;
        }
        switch (k) {
          case KEY_ALLOW: read_name_list(r, "allow", "a header name", &c->allow); break;
          case KEY_ALLOW_PREFIXES:
            read_name_list(r, "allow_prefixes", "a header name prefix", &c->prefixes);
            break;
          default: read_bool(r, "log_dropped", &c->log_dropped); break;
        }
        if (failed(r)) return;
        if (consume(r, ',')) continue;
        if (consume(r, '}')) break;
        syntax_error(r, "expected `,` or `}` in a table");
        return;
      }
    }
  }
  skip_ws(r);
  if (r->p != r->end) {
    syntax_error(r, "unexpected text after the config");
    return;
  }
  if (c->allow.len == 0 && c->prefixes.len == 0) {
    buf_puts(&r->err,
             "nothing is allowed: give `allow` (header names) or `allow_prefixes` (name "
             "prefixes); an empty allowlist would drop every request header");
  }
}

// === exports ===

bool exports_weir_filter_0_2_1_filter_init(http_filter_string_t *json,
                                           exports_weir_filter_0_2_1_filter_filter_info_t *ret,
                                           http_filter_string_t *err) {
  config_free(&config);
  reader_t r = {json->ptr, json->ptr + json->len, json->ptr, {0}};
  read_config(&r, &config);
  http_filter_string_free(json);
  if (failed(&r)) {
    config_free(&config);
    *err = buf_into_string(&r.err);
    return false;
  }
  http_filter_string_dup(&ret->name, FILTER_NAME);
  http_filter_string_dup(&ret->version, FILTER_VERSION);
  // Only on-request: weir never calls on-response, so the way back costs nothing.
  ret->phases = WEIR_FILTER_0_2_1_TYPES_PHASES_REQUEST;
  ret->wants_request_body = false;
  ret->wants_response_body = false;
  ret->may_retry = false;
  return true;
}

// How many values `header-values` returned, freeing them. (wit-bindgen 0.61's
// `http_filter_list_list_u8_free` frees only the outer array, so each value is freed
// here.)
static size_t count_and_free(http_filter_list_list_u8_t *values) {
  size_t n = values->len;
  for (size_t i = 0; i < n; i++) http_filter_list_u8_free(&values->ptr[i]);
  free(values->ptr);
  *values = (http_filter_list_list_u8_t){0};
  return n;
}

void exports_weir_filter_0_2_1_filter_on_request(request_t req, request_action_t *ret) {
  // The names only (lowercase, each once, in the order they first appear): the values
  // of the headers kept never cross into the filter.
  http_filter_list_string_t names;
  weir_filter_0_2_1_types_method_request_header_names(req, &names);
  uint64_t dropped_fields = 0;  // one per header field: a name may come more than once
  buf_t msg = {0};              // the log line, with log_dropped
  for (size_t i = 0; i < names.len; i++) {
    http_filter_string_t *name = &names.ptr[i];
    if (config_allows(&config, name->ptr, name->len)) continue;
    http_filter_list_list_u8_t values;
    weir_filter_0_2_1_types_method_request_header_values(req, name, &values);
    dropped_fields += count_and_free(&values);
    weir_filter_0_2_1_types_method_request_remove_header(req, name);
    if (config.log_dropped) {
      buf_puts(&msg, msg.len ? ", " : "dropped request headers not on the allowlist: ");
      buf_append(&msg, name->ptr, name->len);
    }
  }
  http_filter_list_string_free(&names);

  if (dropped_fields > 0) {
    if (msg.len) {
      http_filter_string_t line = {msg.ptr, msg.len};
      weir_filter_0_1_2_log_log(WEIR_FILTER_0_1_2_LOG_LEVEL_INFO, &line);
    }
    http_filter_string_t metric = {(uint8_t *)DROPPED_METRIC, strlen(DROPPED_METRIC)};
    http_filter_list_tuple2_string_string_t no_labels = {NULL, 0};
    weir_filter_0_1_2_metrics_counter_add(&metric, &no_labels, dropped_fields);
  }
  free(msg.ptr);
  // The removals are made: go on, with no memo (there is no on-response).
  ret->tag = WEIR_FILTER_0_2_1_TYPES_REQUEST_ACTION_CONTINUE;
  weir_filter_0_2_1_types_request_drop_borrow(req);
}

// Not called: `init` declares only the request phase. The world exports it all the same.
void exports_weir_filter_0_2_1_filter_on_response(request_t req, response_t resp,
                                                  response_action_t *ret) {
  ret->tag = WEIR_FILTER_0_2_1_TYPES_RESPONSE_ACTION_CONTINUE;
  weir_filter_0_2_1_types_response_drop_borrow(resp);
  weir_filter_0_2_1_types_request_drop_borrow(req);
}
