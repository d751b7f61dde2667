// {{name}}: a weir filter, in JavaScript, that sets one header on every request it lets
// through.
//
// componentize-js builds this module into a WebAssembly component against weir's WIT
// (`wit/v0.2`, package `weir:filter@0.2.1`, world `http-filter`): `npm run build`. weir
// calls `init` once per instance with the filter's config as JSON, then `onRequest` for
// each request on the routes that use the filter. `onRequest` gets a handle to the
// request, which stays in weir: the filter reads what it needs through the handle's
// methods (`req.header(name)`, `req.method()`, `req.pathWithQuery()`, …) and changes it
// through others (`req.setHeader(name, value)`, …), each applied at once. The exports
// are synchronous calls: no promises.
//
// Config (JSON: the filter's `config` table in weir.toml, config.json in the tests):
//   header  the name of the header to set; an existing header of that name is replaced
//   value   its value
// Both are required. Anything else is refused at `init` with an error that says what is
// wrong, so `weir check` and weir's start-up fail and name it.

import { log } from 'weir:filter/log@0.1.2';

const NAME = '{{name}}';
const VERSION = '0.1.0';

const KEYS = ['header', 'value'];
// The characters HTTP allows in a header name.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;

/** The header (lowercase) and value this instance sets, from `init`. */
let settings = null;

/** Checks the config JSON; returns the settings or throws a message saying what is wrong. */
function parseConfig(json) {
  let config;
  try {
    config = JSON.parse(json);
  } catch (e) {
    throw `the config is not valid JSON: ${e.message}`;
  }
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw 'the config must be a table, e.g. { header = "x-team", value = "payments" }';
  }
  for (const key of Object.keys(config)) {
    if (!KEYS.includes(key)) {
      throw `unknown key \`${key}\` (the keys are header and value)`;
    }
  }
  for (const key of KEYS) {
    if (!(key in config)) throw `missing key \`${key}\``;
    if (typeof config[key] !== 'string') throw `\`${key}\` must be a string`;
  }
  const header = config.header.toLowerCase();
  if (!TOKEN.test(header)) {
    throw `\`header\` must be an HTTP header name, not "${config.header}"`;
  }
  if (/[\r\n\0]/.test(config.value)) {
    throw '`value` must not contain CR, LF or NUL';
  }
  return { header, value: new TextEncoder().encode(config.value) };
}

/** Whether two byte arrays hold the same bytes. */
function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

export const filter = {
  init(config) {
    try {
      settings = parseConfig(config);
    } catch (message) {
      // A thrown string is `init`'s error. Errors name the filter, as weir's Rust SDK does.
      throw `${NAME}: ${message}`;
    }
    return {
      name: NAME,
      version: VERSION,
      // The phases weir calls. This filter has nothing to do on the way back, so weir
      // never calls its `onResponse`; add `response: true` to see responses.
      phases: { request: true, response: false },
      wantsRequestBody: false,
      wantsResponseBody: false,
      mayRetry: false,
    };
  },

  onRequest(req) {
    const { header, value } = settings;
    // Each call on `req` crosses into weir and copies only what it returns: here the
    // values of one header, not the whole request.
    if (req.headerValues(header).some((v) => !sameBytes(v, value))) {
      log('debug', `replacing the client's ${header} header`);
    }
    // Replaces every value the header had, at once. A change weir refuses (an invalid
    // name or value) changes nothing and throws a `ComponentError` whose `payload` is
    // weir's reason; the call's answer then counts as invalid even if the filter catches
    // it, and the filter's `on_error` setting decides what happens to the request.
    req.setHeader(header, value);
    return { tag: 'continue' };
  },

  onResponse(_req, _resp) {
    // Not called: `init` asks for the request phase only. The response goes on unchanged.
    return { tag: 'continue' };
  },
};
