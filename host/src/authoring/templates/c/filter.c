// {{name}}: a weir filter, in C, that sets one header on every request it lets through.
//
// Config (JSON: the filter's `config` table in weir.toml, config.json in the tests):
//   header  the name of the header to set; an existing header of that name is replaced
//   value   its value
// Both are required. Anything else is refused at `init` with an error that says what is
// wrong, so `weir check` and weir's start-up fail and name it.
//
// It is built against weir's WIT `weir:filter@0.2.1` (`wit/v0.2`, world `http-filter`).
// `on-request` gets a handle to the request, which stays in weir: the filter reads what
// it needs through the handle's methods (`weir_filter_0_2_1_types_method_request_header`,
// `..._header_values`, `..._method`, `..._path_with_query`, …) and changes the request
// through others (`..._set_header`, `..._remove_header`, …), each applied at once. It
// asks weir for the request phase only (`phases` in `init`), so weir never calls its
// `on-response`.
//
// Memory and handles: what a call into weir returns (a string, a list) is malloc'd in
// this module, and the filter frees it; what the filter passes to weir stays its own.
// `init` frees the config string it is handed; what it returns is malloc'd here and
// freed by the generated post-return function after weir has copied it out. Each export
// drops the borrowed handles it is given (`*_drop_borrow`) before it returns: the
// component model traps a call that returns with a borrow still held.
//
// `make` builds it (see Makefile); `build/bindings/http_filter.h` declares every type
// and call of weir's WIT. wit-bindgen puts the package version in each name:
// `weir_filter_0_2_1_*` for the request and response handles and the exports,
// `weir_filter_0_1_2_*` for `log`, `metrics`, `state` and `outbound`, which 0.2 imports
// unchanged from 0.1.2 (`wit/v0.2/deps/`).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_filter.h"

#define FILTER_NAME "{{name}}"
#define FILTER_VERSION "0.1.0"

// Shorter names for the generated types the exports use.
typedef weir_filter_0_2_1_types_borrow_request_t request_t;
typedef weir_filter_0_2_1_types_borrow_response_t response_t;
typedef exports_weir_filter_0_2_1_filter_request_action_t request_action_t;
typedef exports_weir_filter_0_2_1_filter_response_action_t response_action_t;

// === a growable byte buffer, for strings and messages ===

typedef struct {
  uint8_t *ptr;
  size_t len;
  size_t cap;
} buf_t;

static void buf_append(buf_t *b, const void *s, size_t n) {
  if (n == 0) return;
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 32;
    while (cap - b->len < n) cap *= 2;
    uint8_t *p = realloc(b->ptr, cap);
    if (!p) abort();
    b->ptr = p;
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
}

static void buf_push(buf_t *b, uint8_t c) { buf_append(b, &c, 1); }

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

static void buf_free(buf_t *b) {
  free(b->ptr);
  *b = (buf_t){0};
}

// === the config ===

// The header this instance sets (lowercase, as weir passes names) and its value. Set by
// `init`, which weir calls once per instance before any request.
static buf_t header;
static buf_t value;

// Whether `c` may appear in an HTTP header name.
static bool is_token_char(uint8_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

// === a small JSON reader for the config's shape: one object of strings ===
//
// It decodes every string escape and reports anything else as an error that says where
// and what it found. It never recurses, so no input can exhaust the stack.

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

static void syntax_error(reader_t *r, const char *what) {
  if (failed(r)) return;
  buf_puts(&r->err, "the config is not valid JSON: ");
  buf_puts(&r->err, what);
  buf_puts(&r->err, " at byte ");
  buf_put_uint(&r->err, (size_t)(r->p - r->start));
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
  size_t n = strlen(word);
  if ((size_t)(r->end - r->p) >= n && memcmp(r->p, word, n) == 0) {
    r->p += n;
    return true;
  }
  return false;
}

// Reads the four hex digits of a \u escape.
static bool read_hex4(reader_t *r, uint32_t *out) {
  if (r->end - r->p < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t c = r->p[i];
    int h = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
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
  r->p++;  // the opening quote
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
    uint32_t cp;
    switch (e) {
      case '"': buf_push(out, '"'); break;
      case '\\': buf_push(out, '\\'); break;
      case '/': buf_push(out, '/'); break;
      case 'b': buf_push(out, '\b'); break;
      case 'f': buf_push(out, '\f'); break;
      case 'n': buf_push(out, '\n'); break;
      case 'r': buf_push(out, '\r'); break;
      case 't': buf_push(out, '\t'); break;
      case 'u':
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
      default:
        r->p--;
        syntax_error(r, "unknown escape in a string");
        return false;
    }
  }
  syntax_error(r, "unterminated string");
  return false;
}

// Reads a key's value, which must be a string.
static void read_string_value(reader_t *r, const char *key, buf_t *out) {
  skip_ws(r);
  if (r->p < r->end && *r->p == '"') {
    read_string(r, out);
    return;
  }
  buf_puts(&r->err, "`");
  buf_puts(&r->err, key);
  buf_puts(&r->err, "` must be a string");
}

// The config's keys.
enum { KEY_HEADER, KEY_VALUE, KEY_COUNT };
static const char *const KEYS[KEY_COUNT] = {"header", "value"};

// Parses and checks the whole config into `h` and `v`; on failure `r->err` says why.
static void read_config(reader_t *r, buf_t *h, buf_t *v) {
  bool seen[KEY_COUNT] = {false};
  if (!consume(r, '{')) {
    buf_puts(&r->err, "the config must be a table, e.g. { header = \"x-team\", value = \"payments\" }");
    return;
  }
  if (!consume(r, '}')) {
    for (;;) {
      skip_ws(r);
      if (r->p >= r->end || *r->p != '"') {
        syntax_error(r, "expected a key");
        return;
      }
      buf_t name = {0};
      if (!read_string(r, &name)) {
        buf_free(&name);
        return;
      }
      int k = -1;
      for (int i = 0; i < KEY_COUNT; i++) {
        if (strlen(KEYS[i]) == name.len && memcmp(KEYS[i], name.ptr, name.len) == 0) k = i;
      }
      if (k < 0 || seen[k]) {
        buf_puts(&r->err, k < 0 ? "unknown key `" : "key given twice: `");
        buf_append(&r->err, name.ptr, name.len);
        buf_puts(&r->err, k < 0 ? "` (the keys are header and value)" : "`");
        buf_free(&name);
        return;
      }
      buf_free(&name);
      seen[k] = true;
      if (!consume(r, ':')) {
        syntax_error(r, "expected `:` after a key");
        return;
      }
      read_string_value(r, KEYS[k], k == KEY_HEADER ? h : v);
      if (failed(r)) return;
      if (consume(r, ',')) continue;
      if (consume(r, '}')) break;
      syntax_error(r, "expected `,` or `}` in a table");
      return;
    }
  }
  skip_ws(r);
  if (r->p != r->end) {
    syntax_error(r, "unexpected text after the config");
    return;
  }
  for (int k = 0; k < KEY_COUNT; k++) {
    if (!seen[k]) {
      buf_puts(&r->err, "missing key `");
      buf_puts(&r->err, KEYS[k]);
      buf_puts(&r->err, "`");
      return;
    }
  }
  bool token = h->len > 0;
  for (size_t i = 0; i < h->len; i++) {
    token = token && is_token_char(h->ptr[i]);
    if (h->ptr[i] >= 'A' && h->ptr[i] <= 'Z') h->ptr[i] = (uint8_t)(h->ptr[i] + 32);
  }
  if (!token) {
    buf_puts(&r->err, "`header` must be an HTTP header name, not \"");
    buf_append(&r->err, h->ptr, h->len);
    buf_puts(&r->err, "\"");
    return;
  }
  for (size_t i = 0; i < v->len; i++) {
    if (v->ptr[i] == '\r' || v->ptr[i] == '\n' || v->ptr[i] == 0) {
      buf_puts(&r->err, "`value` must not contain CR, LF or NUL");
      return;
    }
  }
}

// === exports ===

bool exports_weir_filter_0_2_1_filter_init(http_filter_string_t *json,
                                           exports_weir_filter_0_2_1_filter_filter_info_t *ret,
                                           http_filter_string_t *err) {
  buf_t h = {0}, v = {0};
  reader_t r = {json->ptr, json->ptr + json->len, json->ptr, {0}};
  read_config(&r, &h, &v);
  http_filter_string_free(json);
  if (failed(&r)) {
    buf_free(&h);
    buf_free(&v);
    // Errors name the filter, as weir's Rust SDK does.
    buf_t msg = {0};
    buf_puts(&msg, FILTER_NAME ": ");
    buf_append(&msg, r.err.ptr, r.err.len);
    buf_free(&r.err);
    *err = (http_filter_string_t){msg.ptr, msg.len};
    return false;
  }
  buf_free(&header);
  buf_free(&value);
  header = h;
  value = v;
  http_filter_string_dup(&ret->name, FILTER_NAME);
  http_filter_string_dup(&ret->version, FILTER_VERSION);
  // The phases weir calls. This filter has nothing to do on the way back, so weir never
  // calls its on-response; add WEIR_FILTER_0_2_1_TYPES_PHASES_RESPONSE to see responses.
  ret->phases = WEIR_FILTER_0_2_1_TYPES_PHASES_REQUEST;
  ret->wants_request_body = false;
  ret->wants_response_body = false;
  ret->may_retry = false;
  return true;
}

// Writes one line to weir's log, tagged by weir with the route and the filter.
static void log_line(weir_filter_0_1_2_log_level_t level, const buf_t *msg) {
  http_filter_string_t s = {msg->ptr, msg->len};
  weir_filter_0_1_2_log_log(level, &s);
}

// Whether the client sent the header with a value other than the configured one. Only
// that header's values cross from weir.
static bool client_sent_another_value(request_t req, http_filter_string_t *name) {
  http_filter_list_list_u8_t values;
  weir_filter_0_2_1_types_method_request_header_values(req, name, &values);
  bool other = false;
  for (size_t i = 0; i < values.len; i++) {
    const http_filter_list_u8_t *got = &values.ptr[i];
    if (got->len != value.len || (value.len && memcmp(got->ptr, value.ptr, value.len) != 0)) other = true;
    // wit-bindgen 0.61's `http_filter_list_list_u8_free` frees only the outer array, so
    // each value is freed here, and the array below.
    http_filter_list_u8_free(&values.ptr[i]);
  }
  free(values.ptr);
  return other;
}

void exports_weir_filter_0_2_1_filter_on_request(request_t req, request_action_t *ret) {
  // What the filter passes to weir stays its own: no copies needed.
  http_filter_string_t name = {header.ptr, header.len};
  http_filter_list_u8_t val = {value.ptr, value.len};

  // Logging crosses into weir: worth it here, where a client's own value is lost.
  if (client_sent_another_value(req, &name)) {
    buf_t msg = {0};
    buf_puts(&msg, "replacing the client's ");
    buf_append(&msg, header.ptr, header.len);
    buf_puts(&msg, " header");
    log_line(WEIR_FILTER_0_1_2_LOG_LEVEL_DEBUG, &msg);
    buf_free(&msg);
  }

  // Applied at once, replacing every value the header had. weir refuses a change it
  // cannot make (init has checked the name and value, so this one should not be): the
  // call returns false with the reason, and weir counts the answer as invalid.
  http_filter_string_t refused;
  if (!weir_filter_0_2_1_types_method_request_set_header(req, &name, &val, &refused)) {
    buf_t msg = {0};
    buf_puts(&msg, "weir refused to set the header: ");
    buf_append(&msg, refused.ptr, refused.len);
    log_line(WEIR_FILTER_0_1_2_LOG_LEVEL_ERROR, &msg);
    buf_free(&msg);
    http_filter_string_free(&refused);
  }

  ret->tag = WEIR_FILTER_0_2_1_TYPES_REQUEST_ACTION_CONTINUE;  // with the change made
  weir_filter_0_2_1_types_request_drop_borrow(req);
}

// Not called while `init` declares only the request phase; the world exports it all
// the same.
void exports_weir_filter_0_2_1_filter_on_response(request_t req, response_t resp, response_action_t *ret) {
  ret->tag = WEIR_FILTER_0_2_1_TYPES_RESPONSE_ACTION_CONTINUE;  // the response goes on unchanged
  weir_filter_0_2_1_types_response_drop_borrow(resp);
  weir_filter_0_2_1_types_request_drop_borrow(req);
}
