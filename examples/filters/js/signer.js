// signer: a weir filter in JavaScript that signs each request with HMAC-SHA256, so the
// upstream can tell the request came through weir and was not changed on the way.
//
// The signed string (see README.md, "What is signed") is
//
//     METHOD "\n" PATH-WITH-QUERY "\n" TIMESTAMP "\n" hex(SHA-256(BODY))
//
// and the signature is the lowercase hex of HMAC-SHA256(secret, signed string).
//
// SHA-256 and HMAC are written out here in plain JavaScript: StarlingMonkey's
// `crypto.subtle` is asynchronous, and a weir filter's exports are synchronous calls.
//
// Built with `npm run build` (componentize-js) against the repo's `wit/v0.2` (package
// `weir:filter@0.2.1`), world `http-filter`: weir lends `onRequest` a handle to the
// request, which the filter reads and changes through its methods. This one file is the
// whole filter; it imports nothing.

const NAME = 'signer';
const VERSION = '0.1.0';

// === config ===

/** The config keys, with their defaults (`undefined`: no default). */
const DEFAULTS = {
  secret: undefined,
  secret_encoding: 'utf8',
  header: 'x-signature',
  timestamp: true,
  timestamp_header: 'x-signature-timestamp',
  key_id: undefined,
  key_id_header: 'x-signature-key-id',
};

/** The settings one instance signs with, made once in `init`. */
let settings = null;

/** A config error: `init` returns it as its error text. */
function configError(message) {
  return new Error(`${NAME}: ${message}`);
}

/**
 * Checks the config JSON and returns the settings. Throws a config error naming the key
 * and the problem; no message ever repeats the secret.
 */
function parseConfig(json) {
  let raw;
  try {
    raw = JSON.parse(json);
  } catch {
    // The parser's message would quote the text, and the text holds the secret.
    throw configError('the config is not valid JSON');
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw configError('the config must be a table, e.g. { secret = { env = "SIGNER_SECRET" } }');
  }
  for (const key of Object.keys(raw)) {
    if (!Object.prototype.hasOwnProperty.call(DEFAULTS, key)) {
      const known = Object.keys(DEFAULTS).map((k) => `\`${k}\``).join(', ');
      throw configError(`unknown config key \`${key}\`; the keys are ${known}`);
    }
  }
  const cfg = { ...DEFAULTS, ...raw };

  if (cfg.secret === undefined) {
    throw configError('`secret` is missing: set it to the shared HMAC key, e.g. secret = { env = "SIGNER_SECRET" }');
  }
  if (typeof cfg.secret !== 'string') {
    throw configError('`secret` must be a string');
  }
  if (cfg.secret === '') {
    throw configError('`secret` is empty: set it to the shared HMAC key');
  }
  const key = decodeSecret(cfg.secret, stringKey(cfg, 'secret_encoding'));
  if (key.length === 0) {
    throw configError('`secret` decodes to no bytes');
  }

  if (typeof cfg.timestamp !== 'boolean') {
    throw configError('`timestamp` must be true or false');
  }
  const header = headerName(cfg, 'header');
  const timestampHeader = cfg.timestamp ? headerName(cfg, 'timestamp_header') : null;
  let keyId = null;
  let keyIdHeader = null;
  if (cfg.key_id !== undefined) {
    keyId = stringKey(cfg, 'key_id');
    if (keyId === '' || !isHeaderValue(keyId)) {
      throw configError('`key_id` must be non-empty printable ASCII (it is sent as a header value)');
    }
    keyIdHeader = headerName(cfg, 'key_id_header');
  }
  const names = [header, timestampHeader, keyIdHeader].filter((n) => n !== null);
  if (new Set(names).size !== names.length) {
    throw configError('`header`, `timestamp_header` and `key_id_header` must be different headers');
  }
  return { key: hmacKey(key), header, timestampHeader, keyId, keyIdHeader };
}

/** `cfg[name]`, which must be a string. */
function stringKey(cfg, name) {
  if (typeof cfg[name] !== 'string') {
    throw configError(`\`${name}\` must be a string`);
  }
  return cfg[name];
}

/** `cfg[name]` as a lowercase header name (an HTTP token). */
function headerName(cfg, name) {
  const value = stringKey(cfg, name);
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(value)) {
    throw configError(`\`${name}\` is not a valid header name: "${value}"`);
  }
  return value.toLowerCase();
}

/** Whether `s` can be sent as a header value as it is. */
function isHeaderValue(s) {
  return /^[\x20-\x7e]*$/.test(s);
}

/** The secret's bytes, read as `encoding` says. */
function decodeSecret(secret, encoding) {
  switch (encoding) {
    case 'utf8':
      return utf8(secret);
    case 'hex':
      if (secret.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(secret)) {
        throw configError('`secret` is not valid hex (secret_encoding = "hex"): it needs an even number of 0-9, a-f digits');
      }
      return Uint8Array.from(secret.match(/../g), (pair) => parseInt(pair, 16));
    case 'base64':
      return base64Decode(secret);
    default:
      throw configError('`secret_encoding` must be "utf8", "hex" or "base64"');
  }
}

const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** Standard or URL-safe base64, padding optional. */
function base64Decode(text) {
  const s = text.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
  if (!/^[A-Za-z0-9+/]*$/.test(s) || s.length % 4 === 1) {
    throw configError('`secret` is not valid base64 (secret_encoding = "base64")');
  }
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let bits = 0;
  let nbits = 0;
  let o = 0;
  for (let i = 0; i < s.length; i++) {
    bits = (bits << 6) | BASE64.indexOf(s[i]);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out[o++] = (bits >>> nbits) & 0xff;
    }
  }
  return out;
}

// === SHA-256 (FIPS 180-4) and HMAC (RFC 2104) ===

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

const INITIAL = [
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/**
 * `blocks(h, p, off, end)`: runs the compression function over the 64-byte blocks of the
 * bytes `p` from `off` to `end`, updating the state `h` (8 words in an Int32Array).
 *
 * StarlingMonkey interprets JavaScript (there is no JIT inside WebAssembly), so the speed
 * of this function is the filter's speed on big bodies. It is written out here as one
 * straight run of arithmetic on local variables: the 64 rounds unrolled, the message
 * schedule in 16 rolling locals, the constants inline and the working variables renamed
 * each round instead of shifted. That runs about twice as fast as the textbook loop. The
 * source is made once, when the module is evaluated; componentize-js snapshots the
 * result, so a running filter never compiles it.
 */
const blocks = new Function('h', 'p', 'off', 'end', compressionSource());

function compressionSource() {
  const rotr = (x, n) => `((${x} >>> ${n}) | (${x} << ${32 - n}))`;
  const vars = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'hh'];
  const lines = [
    'let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];',
    'let w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15, t1, t2;',
    'for (; off < end; off += 64) {',
    'const a0 = a, b0 = b, c0 = c, d0 = d, e0 = e, f0 = f, g0 = g, hh0 = hh;',
  ];
  for (let i = 0; i < 64; i++) {
    const w = `w${i & 15}`;
    if (i < 16) {
      const at = (k) => `p[off + ${4 * i + k}]`;
      lines.push(`${w} = (${at(0)} << 24) | (${at(1)} << 16) | (${at(2)} << 8) | ${at(3)};`);
    } else {
      // w[i] = w[i-16] + σ0(w[i-15]) + w[i-7] + σ1(w[i-2]); w[i-16] is the same local.
      const x = `w${(i - 15) & 15}`;
      const y = `w${(i - 2) & 15}`;
      const s0 = `${rotr(x, 7)} ^ ${rotr(x, 18)} ^ (${x} >>> 3)`;
      const s1 = `${rotr(y, 17)} ^ ${rotr(y, 19)} ^ (${y} >>> 10)`;
      lines.push(`${w} = (${w} + (${s0}) + w${(i - 7) & 15} + (${s1})) | 0;`);
    }
    // Round i's a..h are the names rotated right by i: the new `a` goes into the name
    // that held `h`, and the new `e` into the one that held `d`.
    const [A, B, C, D, E, F, G, H] = vars.map((_, j) => vars[(j - i + 64) % 8]);
    const S1 = `${rotr(E, 6)} ^ ${rotr(E, 11)} ^ ${rotr(E, 25)}`;
    const S0 = `${rotr(A, 2)} ^ ${rotr(A, 13)} ^ ${rotr(A, 22)}`;
    const ch = `${G} ^ (${E} & (${F} ^ ${G}))`;
    const maj = `(${A} & ${B}) | (${C} & (${A} | ${B}))`;
    lines.push(`t1 = (${H} + (${S1}) + (${ch}) + ${K[i]} + ${w}) | 0;`);
    lines.push(`t2 = ((${S0}) + (${maj})) | 0;`);
    lines.push(`${D} = (${D} + t1) | 0;`);
    lines.push(`${H} = (t1 + t2) | 0;`);
  }
  // After 64 rounds (a multiple of 8) every name is back in its place.
  for (const v of vars) {
    lines.push(`${v} = (${v} + ${v}0) | 0;`);
  }
  lines.push('}');
  lines.push('h[0] = a; h[1] = b; h[2] = c; h[3] = d; h[4] = e; h[5] = f; h[6] = g; h[7] = hh;');
  return lines.join('\n');
}

/**
 * SHA-256 of the concatenation of `parts` (Uint8Arrays), as 32 bytes. `prefix`, if given,
 * is the state after a first 64-byte block that is not in `parts` (HMAC's padded key).
 */
function sha256(parts, prefix) {
  const h = new Int32Array(prefix || INITIAL);
  let total = prefix ? 64 : 0;
  const tail = new Uint8Array(128);
  let fill = 0;
  for (const part of parts) {
    let off = 0;
    total += part.length;
    if (fill > 0) {
      const take = Math.min(64 - fill, part.length);
      tail.set(part.subarray(0, take), fill);
      fill += take;
      off = take;
      if (fill < 64) continue;
      blocks(h, tail, 0, 64);
      fill = 0;
    }
    const whole = off + ((part.length - off) & ~63);
    blocks(h, part, off, whole);
    tail.set(part.subarray(whole), 0);
    fill = part.length - whole;
  }
  // Padding: 0x80, zeros, then the length in bits as a 64-bit big-endian number.
  tail.fill(0, fill);
  tail[fill] = 0x80;
  const end = fill < 56 ? 64 : 128;
  const bits = total * 8;
  const high = Math.floor(bits / 0x100000000);
  const low = bits >>> 0;
  tail[end - 8] = high >>> 24;
  tail[end - 7] = high >>> 16;
  tail[end - 6] = high >>> 8;
  tail[end - 5] = high;
  tail[end - 4] = low >>> 24;
  tail[end - 3] = low >>> 16;
  tail[end - 2] = low >>> 8;
  tail[end - 1] = low;
  blocks(h, tail, 0, end);
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    out[i * 4] = h[i] >>> 24;
    out[i * 4 + 1] = h[i] >>> 16;
    out[i * 4 + 2] = h[i] >>> 8;
    out[i * 4 + 3] = h[i];
  }
  return out;
}

/**
 * HMAC's key schedule, done once: the SHA-256 states after the inner (key ^ 0x36) and
 * outer (key ^ 0x5c) blocks.
 */
function hmacKey(key) {
  const k = new Uint8Array(64);
  k.set(key.length > 64 ? sha256([key]) : key);
  const state = (pad) => {
    const block = k.map((b) => b ^ pad);
    const h = new Int32Array(INITIAL);
    blocks(h, block, 0, 64);
    return h;
  };
  return { inner: state(0x36), outer: state(0x5c) };
}

/** HMAC-SHA256 of `message` under a key made by `hmacKey`, as 32 bytes. */
function hmacSha256(key, message) {
  return sha256([sha256([message], key.inner)], key.outer);
}

const HEX = '0123456789abcdef';

function hex(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) {
    s += HEX[bytes[i] >> 4] + HEX[bytes[i] & 15];
  }
  return s;
}

const encoder = new TextEncoder();

function utf8(s) {
  return encoder.encode(s);
}

/** The string that is signed; README.md documents it for upstreams. */
function canonical(method, pathWithQuery, timestamp, body) {
  return `${method}\n${pathWithQuery}\n${timestamp}\n${hex(sha256([body]))}`;
}

// === the exports ===

const EMPTY = new Uint8Array(0);

export const filter = {
  /** Checks the config and keeps the settings; asks for the request phase and body only. */
  init(config) {
    try {
      settings = parseConfig(config);
    } catch (e) {
      // A thrown string is `init`'s error result.
      throw e instanceof Error ? e.message : String(e);
    }
    return {
      name: NAME,
      version: VERSION,
      // Nothing to do on the way back: weir never calls `onResponse`.
      phases: { request: true, response: false },
      wantsRequestBody: true,
      wantsResponseBody: false,
      mayRetry: false,
    };
  },

  /**
   * Adds the signature (and timestamp and key id) headers through the request handle;
   * changes nothing else. Reads only the method, the path and the body from weir.
   */
  onRequest(req) {
    const timestamp = settings.timestampHeader === null ? '' : String(Math.floor(Date.now() / 1000));
    const signed = canonical(req.method(), req.pathWithQuery(), timestamp, req.body() || EMPTY);
    // weir applies each change at once. A change it refuses throws a `ComponentError`
    // (its `payload` is weir's reason) and makes the call's answer invalid, caught or
    // not; these are not refused: the names were checked in `init`, and the values are
    // hex, digits and printable ASCII.
    req.setHeader(settings.header, utf8(hex(hmacSha256(settings.key, utf8(signed)))));
    if (settings.timestampHeader !== null) {
      req.setHeader(settings.timestampHeader, utf8(timestamp));
    }
    if (settings.keyIdHeader !== null) {
      req.setHeader(settings.keyIdHeader, utf8(settings.keyId));
    }
    return { tag: 'continue' };
  },

  /** Never called (the filter declares the request phase only); passes the response on. */
  onResponse(_req, _resp) {
    return { tag: 'continue' };
  },
};
