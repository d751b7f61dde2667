//! An upstream's HTTP/1 response as weir's own exchange reads it (`upstream::h1`, for
//! requests without a body or with a small one in hand), against hyper's client
//! connection given the same bytes (`weir::upstream::h1_compare`).
//!
//! Properties, for any bytes an upstream sends to a `GET`, a `HEAD` or a `POST` with a
//! body of up to 16 KiB, with or without `Connection: close`, arriving in any pieces,
//! after which the upstream answers a second request on the connection, if one comes,
//! with a fixed response:
//! - the own exchange never panics or hangs;
//! - the upstream is asked the same by both: method, target, headers, and a body framed
//!   by the same length;
//! - a client sees what hyper's client gave it: no response where hyper gave none; else
//!   the same status and headers, and a body that ends whole, with the same data and
//!   trailers, exactly when hyper's does (the data before a cut and the errors' words
//!   may differ);
//! - a connection the own exchange keeps reads the second response as it was sent (or
//!   what hyper's client read there too): its first body ended at the right byte.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir::upstream::h1_compare::{Case, Run, both};

#[derive(Debug)]
struct Input(Case);

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let head = u.arbitrary()?;
        let close = u.arbitrary()?;
        // A `POST` with a body of up to 16 KiB, the most the own exchange takes whole.
        let body = if u.arbitrary()? {
            let len = u.int_in_range(0..=16 * 1024)?;
            Some(vec![u.arbitrary::<u8>()?; len])
        } else {
            None
        };
        let pieces = u.int_in_range(0..=4)?;
        let cuts = (0..pieces)
            .map(|_| u.arbitrary::<u16>().map(usize::from))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Input(Case {
            head,
            body,
            close,
            cuts,
            reply: u.bytes(u.len())?.to_vec(),
        }))
    }
}

fuzz_target!(|input: Input| {
    let case = input.0;
    let (own, hyper) = both(&case);
    if let Some(fault) = Run::fault(&own, &hyper) {
        panic!(
            "{fault}: reply {:?} (head: {}, body: {:?} bytes, close: {}, cuts: {:?})\n  own: {own:?}\nhyper: {hyper:?}",
            String::from_utf8_lossy(&case.reply),
            case.head,
            case.body.as_ref().map(Vec::len),
            case.close,
            case.cuts,
        );
    }
});
