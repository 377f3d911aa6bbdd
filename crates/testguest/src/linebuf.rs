//! A fixed-size line buffer for `core::fmt`, so a whole line can be formatted before the
//! console lock is taken.

use core::fmt;

/// Bytes formatted so far; output beyond the capacity is dropped (the line is truncated).
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> LineBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Whether output was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Appends `bytes`, dropping what does not fit.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let room = N - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self.truncated |= n < bytes.len();
    }

    /// Appends a newline, replacing the last byte if the buffer is full, so that a line
    /// always ends with one.
    pub fn finish_line(&mut self) {
        if self.len == N && N > 0 {
            self.len -= 1;
            self.truncated = true;
        }
        self.push_bytes(b"\n");
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn formats_and_truncates() {
        let mut b = LineBuf::<8>::new();
        write!(b, "ab{}", 12).unwrap();
        assert_eq!(b.as_bytes(), b"ab12");
        assert!(!b.truncated());
        write!(b, "3456789").unwrap();
        assert_eq!(b.as_bytes(), b"ab123456");
        assert!(b.truncated());
        b.finish_line();
        assert_eq!(b.as_bytes(), b"ab12345\n");
    }

    #[test]
    fn newline_appended() {
        let mut b = LineBuf::<8>::new();
        b.push_bytes(b"x");
        b.finish_line();
        assert_eq!(b.as_bytes(), b"x\n");
    }
}
