//! A client's bytes as weir's own HTTP/1 server side answers them (`listener::h1`,
//! which hands what it does not serve to hyper), against hyper's server connection
//! given the same bytes (`weir::listener::h1_compare`).
//!
//! Properties, for any bytes a client sends, in any pieces, and any of the replies the
//! service may give (status, body whole, in parts or none, with or without its own
//! length, coding, `connection: close` and `date` lines, HTTP/1.0 or 1.1, after reading
//! the request's body or without it):
//! - the own side never panics;
//! - the client gets the same bytes back as from hyper (each `date` value masked), and
//!   the connection is closed after them exactly when hyper closed it. The service's
//!   body lists the request head and body it saw, so a request read differently shows
//!   too.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir::listener::h1_compare::{Case, Reply, both};

#[derive(Debug)]
struct Input(Case);

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let reply = Reply {
            status: u.arbitrary()?,
            body: u.int_in_range(0..=4)?,
            length_line: u.arbitrary()?,
            chunked_line: u.arbitrary()?,
            close_line: u.arbitrary()?,
            http10: u.arbitrary()?,
            date_line: u.arbitrary()?,
            skip_body: u.arbitrary()?,
        };
        let pieces = u.int_in_range(0..=4)?;
        let cuts = (0..pieces)
            .map(|_| u.arbitrary::<u16>().map(usize::from))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Input(Case {
            request: u.bytes(u.len())?.to_vec(),
            cuts,
            reply,
        }))
    }
}

fuzz_target!(|input: Input| {
    let case = input.0;
    let (own, hyper) = both(&case);
    assert_eq!(
        own,
        hyper,
        "the own side's answer differs from hyper's: request {:?} (cuts {:?}, reply {:?})",
        String::from_utf8_lossy(&case.request),
        case.cuts,
        case.reply,
    );
});
