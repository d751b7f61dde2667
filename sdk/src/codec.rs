//! A small binary encoding for values a filter keeps in `state`: big-endian integers and
//! length-prefixed byte strings. Compact, and cheap to decode on the request path.
//!
//! ```
//! use weir_filter::codec::{put_bytes, Reader};
//! let mut w = Vec::new();
//! w.push(1u8);
//! put_bytes(&mut w, b"body");
//! let mut r = Reader::new(&w);
//! assert_eq!((r.u8(), r.bytes()), (Some(1), Some(&b"body"[..])));
//! assert!(r.is_empty());
//! ```

/// Appends `b` with a 4-byte big-endian length prefix.
pub fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

/// Reads what the writers above wrote; every method returns `None` on truncated input.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    /// Whether everything was read (a decoder should refuse trailing bytes).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A byte string written by [`put_bytes`].
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    /// A UTF-8 string written by [`put_bytes`].
    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_input_is_none() {
        let mut w = Vec::new();
        put_bytes(&mut w, b"abcdef");
        assert_eq!(Reader::new(&w[..w.len() - 1]).bytes(), None);
        assert_eq!(Reader::new(&[0, 1]).u64(), None);
        let mut r = Reader::new(&w);
        assert_eq!(r.string().as_deref(), Some("abcdef"));
        assert!(r.is_empty());
    }
}
