//! The batch JSON of `POST /_weir/batch` ([`weir::batch::parse`]), at most
//! [`MAX_ITEMS`] calls as `batch.max_items` allows.
//!
//! Properties: no panic; an accepted batch has between 1 and [`MAX_ITEMS`] calls, each
//! with a path and query that starts with `/` and is none of weir's own URLs, and
//! headers that can be sent: no `content-length` (weir sets it from the body), no
//! `transfer-encoding`, and no CR, LF or NUL in a value. A refused one names a JSON
//! pointer (empty, or `/`-separated).
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_ITEMS: usize = 16;

fuzz_target!(|data: &[u8]| {
    match weir::batch::parse(data, MAX_ITEMS) {
        Err(e) => {
            assert!(e.pointer.is_empty() || e.pointer.starts_with('/'), "{e:?}");
            let _ = e.to_string();
        }
        Ok(calls) => {
            assert!(!calls.is_empty() && calls.len() <= MAX_ITEMS);
            for call in &calls {
                let path = call.path.as_str();
                assert!(path.starts_with('/'), "{path:?}");
                assert!(!path.starts_with(weir::batch::PATH), "{path:?}");
                for (n, v) in &call.headers {
                    assert_ne!(n, http::header::CONTENT_LENGTH);
                    assert_ne!(n, http::header::TRANSFER_ENCODING);
                    let bytes = v.as_bytes();
                    assert!(
                        !bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                        "{v:?}"
                    );
                }
            }
        }
    }
});
