//! Request paths as weir routes and forwards them: normalised, so that no spelling of a
//! path can match one route and then mean another path at the upstream.
//!
//! 1. [`normalise`] decodes percent-encoded unreserved characters (`A`–`Z`, `a`–`z`,
//!    `0`–`9`, `-`, `.`, `_`, `~`; RFC 3986 §2.3) and then removes dot segments
//!    ([`remove_dot_segments`], RFC 3986 §5.2.4). Every other escape stays as it came,
//!    hex case included, so `%252e` (an encoded `%`) is never decoded twice. The query is
//!    not part of the path and is never touched.
//! 2. It refuses, on any route, a path whose meaning depends on how the upstream reads it:
//!    a malformed escape (`%zz`, a lone `%`), or a segment that hides a dot segment behind
//!    `;`, an encoded slash or a backslash (`..;`, `..%2F`, `%2e%2e%5c`, `..\`). Each of
//!    these climbs out of the route at some common upstream (Tomcat's path parameters,
//!    servers that decode `%2F` or treat `\` as `/`), and no legitimate client sends them.
//! 3. It reports, in [`Normalised::escaped`], the first thing a route's
//!    `escaped_paths = "reject"` (the default) refuses: an encoded slash (`%2F`), a
//!    backslash (raw or `%5C`), or a segment that is `.` or `..` only once decoded
//!    (`%2e%2e`). The router applies that policy once it knows the route (the default
//!    when no route matches the normalised path); with
//!    `escaped_paths = "keep"` encoded slashes and backslashes go upstream as they came,
//!    and encoded dot segments are removed like plain ones (they are the same path, RFC
//!    3986 §6.2.2), so they can never climb out of the route.
//!
//! Routing, `strip_prefix` and the path sent upstream all use the normalised path.

use std::fmt;

use serde::Deserialize;

/// `[[routes]] escaped_paths`: what a route does with a path that has an encoded slash, a
/// backslash or an encoded dot segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedPaths {
    /// Answer 400 `bad_path` (the default), as Envoy's `path_with_escaped_slashes_action`
    /// can: these are how path-traversal attacks get past a prefix match.
    #[default]
    Reject,
    /// Forward encoded slashes and backslashes unchanged, for upstreams whose paths carry
    /// them (e.g. an id like `group%2Fproject`). Encoded dot segments are still removed.
    Keep,
}

/// What `escaped_paths = "reject"` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaped {
    /// `%2F` or `%2f`.
    Slash,
    /// `\`, `%5C` or `%5c`.
    Backslash,
    /// A segment that is `.` or `..` only after decoding, such as `%2e%2e` or `.%2E`.
    DotSegment,
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Escaped::Slash => "an encoded slash (%2F)",
            Escaped::Backslash => "a backslash (\\ or %5C)",
            Escaped::DotSegment => "an encoded dot segment (such as %2e%2e)",
        })
    }
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("path has an invalid percent-encoding {0:?}")]
    BadEscape(String),
    /// A segment that is not a dot segment but has one behind `;`, `%2F`, `%5C` or `\`.
    #[error("path segment {0:?} hides a dot segment behind `;`, an encoded slash or a backslash")]
    HiddenDotSegment(String),
    /// What `escaped_paths = "reject"` refuses, on the route that refuses it.
    #[error("path has {what}, which route `{route}` refuses (escaped_paths = \"reject\")")]
    Refused {
        /// What the path has.
        what: Escaped,
        /// The route that matched the normalised path.
        route: String,
    },
    /// What `escaped_paths = "reject"` refuses, in a path no route takes: the default
    /// applies, so an attack is answered as one, not as a missing route.
    #[error(
        "path has {what}, which is refused by default (escaped_paths = \"reject\"; no route matches the normalised path {path})"
    )]
    RefusedWithoutRoute {
        /// What the path has.
        what: Escaped,
        /// The normalised path.
        path: String,
    },
}

/// A path as weir routes and forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised<'a> {
    /// The path with unreserved characters decoded and dot segments removed: borrowed
    /// when the request's own path is already so (most are), so that it is not copied.
    pub path: std::borrow::Cow<'a, str>,
    /// The first thing in the path that `escaped_paths = "reject"` refuses.
    pub escaped: Option<Escaped>,
}

/// Normalises `path` (a request's path, without the query) as the module docs say.
/// A path that does not start with `/` (`*`, or the empty path of a CONNECT) is returned
/// as it is: it has no segments to resolve.
pub fn normalise(path: &str) -> Result<Normalised<'_>, PathError> {
    // Most paths have nothing to decode or resolve: one scan instead of the rebuild.
    if !path.starts_with('/') || is_plain(path) {
        return Ok(Normalised {
            path: std::borrow::Cow::Borrowed(path),
            escaped: None,
        });
    }
    rebuild(path)
}

/// [`normalise`] for a path that starts with `/`: decodes each segment and removes the
/// dot segments.
fn rebuild(path: &str) -> Result<Normalised<'static>, PathError> {
    let mut decoded = String::with_capacity(path.len());
    let mut escaped = None;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            decoded.push('/');
        }
        let start = decoded.len();
        let found = decode_segment(segment, &mut decoded)?;
        if found.hides_dot {
            return Err(PathError::HiddenDotSegment(segment.to_owned()));
        }
        let what = if is_dot(&decoded[start..]) && segment != &decoded[start..] {
            Some(Escaped::DotSegment)
        } else if found.slash {
            Some(Escaped::Slash)
        } else if found.backslash {
            Some(Escaped::Backslash)
        } else {
            None
        };
        escaped = escaped.or(what);
    }
    Ok(Normalised {
        path: remove_dot_segments(&decoded).into(),
        escaped,
    })
}

/// Whether `path` is its own normal form: no escape, backslash or `;` to look at, and
/// no `.` or `..` segment to remove.
fn is_plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.iter().any(|b| matches!(b, b'%' | b'\\' | b';'))
        && !bytes
            .split(|&b| b == b'/')
            .any(|segment| segment == b"." || segment == b"..")
}

/// What [`decode_segment`] saw in one segment.
#[derive(Default)]
struct Found {
    slash: bool,
    backslash: bool,
    /// A piece between `;`, `%2F`, `%5C` and `\` is `.` or `..` once decoded.
    hides_dot: bool,
}

/// Appends `segment` to `out` with its unreserved characters decoded, and says what it
/// saw.
fn decode_segment(segment: &str, out: &mut String) -> Result<Found, PathError> {
    let mut found = Found::default();
    // Where the current piece starts in `out`, and whether a boundary came before it.
    let mut piece = out.len();
    let mut split = false;
    let mut chars = segment.char_indices();
    while let Some((at, c)) = chars.next() {
        let boundary_at = out.len();
        let boundary = match c {
            '%' => {
                let hex = segment
                    .get(at + 1..at + 3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let Some(hex) = hex else {
                    let end = segment.len().min(at + 3);
                    let text = String::from_utf8_lossy(&segment.as_bytes()[at..end]);
                    return Err(PathError::BadEscape(text.into_owned()));
                };
                // Two ASCII hex digits: two chars to skip, and always a byte.
                chars.nth(1);
                let byte = u8::from_str_radix(hex, 16).unwrap_or_default();
                if is_unreserved(byte) {
                    out.push(char::from(byte));
                    continue;
                }
                out.push('%');
                out.push_str(hex);
                match byte {
                    b'/' => found.slash = true,
                    b'\\' => found.backslash = true,
                    _ => continue,
                }
                true
            }
            '\\' => {
                found.backslash = true;
                out.push(c);
                true
            }
            ';' => {
                out.push(c);
                true
            }
            _ => {
                out.push(c);
                false
            }
        };
        if boundary {
            found.hides_dot |= is_dot(&out[piece..boundary_at]);
            piece = out.len();
            split = true;
        }
    }
    // Without a boundary the one piece is the segment itself: a plain dot segment.
    found.hides_dot |= split && is_dot(&out[piece..]);
    Ok(found)
}

/// Whether `s` is a dot segment.
fn is_dot(s: &str) -> bool {
    matches!(s, "." | "..")
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4, step by step: removes the `.` and `..` segments of `path`, a `..`
/// taking the segment before it with it (never going above the root).
pub fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            // A.
            input = rest;
        } else if input.starts_with("/./") {
            // B: "/./x" becomes "/x".
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            // C: "/../x" becomes "/x", and the last output segment goes.
            input = &input[3..];
            pop_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut output);
        } else if input == "." || input == ".." {
            // D.
            input = "";
        } else {
            // E: move the first segment, with its leading "/", to the output.
            let from = usize::from(input.starts_with('/'));
            let end = input[from..].find('/').map_or(input.len(), |i| from + i);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

/// Removes the last segment of `output` and the `/` before it, if any.
fn pop_segment(output: &mut String) {
    let at = output.rfind('/').unwrap_or(0);
    output.truncate(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3986 §5.4: each reference resolved against the base `http://a/b/c/d;p?q`.
    /// Merging (§5.2.3) puts a relative path after `/b/c/`; what remains to check is that
    /// removing dot segments from the merged path gives the RFC's target path. References
    /// with a scheme, authority, query or fragment only, which never reach this step, are
    /// left out.
    #[test]
    fn a_plain_path_is_its_own_normal_form() {
        let alphabet = ["/", "a", ".", "..", "%2e", "%2F", ";", "\\", "~"];
        let mut plain = 0;
        // Every path of "/" and up to four pieces of the alphabet.
        for n in 0..=4u32 {
            for mut i in 0..alphabet.len().pow(n) {
                let mut path = String::from("/");
                for _ in 0..n {
                    path.push_str(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                if is_plain(&path) {
                    plain += 1;
                    let full = rebuild(&path).unwrap();
                    assert_eq!(full.path, path);
                    assert_eq!(full.escaped, None, "{path}");
                }
            }
        }
        assert!(plain > 100, "only {plain} plain paths");
        assert!(!is_plain("/a/../b") && !is_plain("/a/.") && !is_plain("/%41"));
        assert!(is_plain("/.well-known/x..y/"));
    }

    #[test]
    fn remove_dot_segments_resolves_the_rfc_3986_examples() {
        let cases = [
            // 5.4.1 normal examples.
            ("g", "/b/c/g"),
            ("./g", "/b/c/g"),
            ("g/", "/b/c/g/"),
            ("/g", "/g"),
            ("g;x", "/b/c/g;x"),
            (";x", "/b/c/;x"),
            (".", "/b/c/"),
            ("./", "/b/c/"),
            ("..", "/b/"),
            ("../", "/b/"),
            ("../g", "/b/g"),
            ("../..", "/"),
            ("../../", "/"),
            ("../../g", "/g"),
            // 5.4.2 abnormal examples.
            ("../../../g", "/g"),
            ("../../../../g", "/g"),
            ("/./g", "/g"),
            ("/../g", "/g"),
            ("g.", "/b/c/g."),
            (".g", "/b/c/.g"),
            ("g..", "/b/c/g.."),
            ("..g", "/b/c/..g"),
            ("./../g", "/b/g"),
            ("./g/.", "/b/c/g/"),
            ("g/./h", "/b/c/g/h"),
            ("g/../h", "/b/c/h"),
            ("g;x=1/./y", "/b/c/g;x=1/y"),
            ("g;x=1/../y", "/b/c/y"),
        ];
        for (reference, want) in cases {
            let merged = if reference.starts_with('/') {
                reference.to_owned()
            } else {
                format!("/b/c/{reference}")
            };
            assert_eq!(remove_dot_segments(&merged), want, "{reference}");
        }
    }

    #[test]
    fn remove_dot_segments_follows_the_rfc_walkthroughs() {
        // The two worked examples of §5.2.4.
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        // Empty segments are segments: ".." takes one back, and "//" stays.
        assert_eq!(remove_dot_segments("/a//../b"), "/a/b");
        assert_eq!(remove_dot_segments("/a//b"), "/a//b");
        assert_eq!(remove_dot_segments("/.."), "/");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments(""), "");
    }

    fn ok(path: &str) -> (String, Option<Escaped>) {
        let n = normalise(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        (n.path.into_owned(), n.escaped)
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_kept_as_they_came() {
        assert_eq!(ok("/%41%7a%30%2D%2e%5F%7E"), ("/Az0-._~".into(), None));
        // Reserved and other characters stay encoded, hex case as sent.
        assert_eq!(
            ok("/a%20b%3Fc%3fd%25e%23"),
            ("/a%20b%3Fc%3fd%25e%23".into(), None)
        );
        // Double encoding is decoded once at most: %25 is not unreserved.
        assert_eq!(
            ok("/api/%252e%252e%252f"),
            ("/api/%252e%252e%252f".into(), None)
        );
        // Overlong UTF-8 is not unreserved either.
        assert_eq!(ok("/%c0%ae%c0%ae/x"), ("/%c0%ae%c0%ae/x".into(), None));
        // Text that is not ASCII passes.
        assert_eq!(ok("/caf\u{e9}/./x"), ("/caf\u{e9}/x".into(), None));
    }

    #[test]
    fn dot_segments_are_removed_and_encoded_ones_reported() {
        assert_eq!(ok("/api/../../admin"), ("/admin".into(), None));
        assert_eq!(ok("/api/./x/."), ("/api/x/".into(), None));
        assert_eq!(
            ok("/api/%2e%2e/%2e%2e/etc"),
            ("/etc".into(), Some(Escaped::DotSegment))
        );
        assert_eq!(
            ok("/api/x/.%2E"),
            ("/api/".into(), Some(Escaped::DotSegment))
        );
        assert_eq!(ok("/api/%2e"), ("/api/".into(), Some(Escaped::DotSegment)));
        // Dots inside a name are not dot segments.
        assert_eq!(ok("/a%2e/..b/.c./"), ("/a./..b/.c./".into(), None));
    }

    #[test]
    fn escaped_slashes_and_backslashes_are_kept_and_reported() {
        assert_eq!(ok("/a%2Fb"), ("/a%2Fb".into(), Some(Escaped::Slash)));
        assert_eq!(ok("/a%2fb"), ("/a%2fb".into(), Some(Escaped::Slash)));
        assert_eq!(ok("/a%5cb"), ("/a%5cb".into(), Some(Escaped::Backslash)));
        assert_eq!(ok("/a\\b"), ("/a\\b".into(), Some(Escaped::Backslash)));
        // The first one in the path is reported.
        assert_eq!(
            ok("/a\\b/%2e/c%2F"),
            ("/a\\b/c%2F".into(), Some(Escaped::Backslash))
        );
        // "//" is an empty segment, not an escape.
        assert_eq!(ok("/api//admin"), ("/api//admin".into(), None));
    }

    #[test]
    fn dot_segments_hidden_in_a_segment_are_refused() {
        for path in [
            "/api/..;/admin",
            "/api/.;x=1/admin",
            "/api/x;..",
            "/api/..%2fadmin",
            "/api/..%2Fadmin",
            "/api/%2e%2e%2fadmin",
            "/api/a%2F..",
            "/api/..%5cadmin",
            "/api/..\\admin",
            "/api/%2e%2e%5C",
            "/api/x\\.",
        ] {
            assert!(
                matches!(normalise(path), Err(PathError::HiddenDotSegment(_))),
                "{path}: {:?}",
                normalise(path)
            );
        }
        assert_eq!(
            normalise("/api/..;/x").unwrap_err().to_string(),
            "path segment \"..;\" hides a dot segment behind `;`, an encoded slash or a backslash"
        );
        // Parameters and escapes around other names are fine.
        assert_eq!(ok("/a;v=1/b"), ("/a;v=1/b".into(), None));
        assert_eq!(ok("/a;/b"), ("/a;/b".into(), None));
        assert_eq!(ok("/...;x"), ("/...;x".into(), None));
        assert_eq!(ok("/a%2F.b"), ("/a%2F.b".into(), Some(Escaped::Slash)));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for (path, shown) in [
            ("/a%", "%"),
            ("/a%2", "%2"),
            ("/a%zz", "%zz"),
            ("/a%+1", "%+1"),
            ("/a%-1/b", "%-1"),
            ("/a%e\u{e9}", "%e\u{fffd}"),
        ] {
            assert_eq!(
                normalise(path),
                Err(PathError::BadEscape(shown.into())),
                "{path}"
            );
        }
    }

    #[test]
    fn paths_without_a_leading_slash_are_left_alone() {
        assert_eq!(ok("*"), ("*".into(), None));
        assert_eq!(ok(""), ("".into(), None));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in [
            "/api/../../admin",
            "/api/%2e%2e/x/%41",
            "/a/./b/../c//d/",
            "/a%2F%2ex/b",
            "/%252e%252e/",
            "/x/.%2e",
        ] {
            let once = normalise(path).unwrap();
            let twice = normalise(&once.path).unwrap();
            assert_eq!(once.path, twice.path, "{path}");
        }
    }
}
