//! Portable parts of the block workloads: the data pattern the host side also uses, the
//! random-offset generator, the split-virtqueue layout and the GET_ID string.

/// The data pattern: the 8-byte little-endian word at disk byte offset `offset` (a
/// multiple of 8) for `seed`. The VMM's tests write and check images with the same formula.
#[inline]
pub const fn pattern_word(offset: u64, seed: u64) -> u64 {
    offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed
}

/// Fills `buf` with the pattern of the disk bytes starting at `offset` (a multiple of 8;
/// `buf.len()` a multiple of 8, any tail is left alone).
pub fn fill_pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let o = offset.wrapping_add(8 * i as u64);
        word.copy_from_slice(&pattern_word(o, seed).to_le_bytes());
    }
}

/// A word that does not hold the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Disk byte offset of the word.
    pub offset: u64,
    /// What the pattern says.
    pub expected: u64,
    /// What was read.
    pub found: u64,
}

/// Checks that `buf` holds the pattern of the disk bytes starting at `offset`; returns the
/// first word that does not.
pub fn check_pattern(buf: &[u8], offset: u64, seed: u64) -> Option<Mismatch> {
    buf.chunks_exact(8).enumerate().find_map(|(i, word)| {
        let o = offset.wrapping_add(8 * i as u64);
        let expected = pattern_word(o, seed);
        let found = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        (found != expected).then_some(Mismatch {
            offset: o,
            expected,
            found,
        })
    })
}

/// xorshift64* : random request offsets.
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and `stream` (e.g. the CPU index); never the all-zero state.
    pub fn new(seed: u64, stream: u64) -> Self {
        let s =
            (seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)).wrapping_add(0x2545_F491_4F6C_DD1D);
        Self(if s == 0 { 1 } else { s })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0; 0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Byte offsets of the parts of a split virtqueue of `size` entries (at most 256) laid out
/// from offset 0 of a DMA area, one 4 KiB page each: descriptor table, available ring,
/// used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Entries.
    pub size: u16,
}

impl RingLayout {
    /// Descriptor table offset (16 bytes per entry, 16-byte aligned).
    pub const DESC: u64 = 0;
    /// Available ring offset (2-byte aligned).
    pub const AVAIL: u64 = 0x1000;
    /// Used ring offset (4-byte aligned).
    pub const USED: u64 = 0x2000;
    /// Bytes the three parts take (end of the used ring's page).
    pub const BYTES: u64 = 0x3000;

    /// Offset of descriptor `i`.
    pub fn desc(i: u16) -> u64 {
        Self::DESC + 16 * u64::from(i)
    }

    /// Offset of available-ring slot `i` (taken modulo the size).
    pub fn avail_slot(&self, i: u16) -> u64 {
        Self::AVAIL + 4 + 2 * u64::from(i % self.size.max(1))
    }

    /// Offset of used-ring element `i` (taken modulo the size).
    pub fn used_elem(&self, i: u16) -> u64 {
        Self::USED + 4 + 8 * u64::from(i % self.size.max(1))
    }

    /// Whether a queue of `size` entries fits the layout.
    pub fn fits(size: u16) -> bool {
        let s = u64::from(size);
        16 * s <= Self::AVAIL
            && 6 + 2 * s <= Self::USED - Self::AVAIL
            && 6 + 8 * s <= Self::BYTES - Self::USED
    }
}

/// The GET_ID answer as printed: bytes up to the first NUL, printable ASCII other than
/// space and `=` kept, anything else as `_`. Empty if the device returned an empty string.
pub fn id_string<'b>(raw: &[u8], out: &'b mut [u8; 20]) -> &'b str {
    let mut n = 0;
    for (&b, slot) in raw.iter().take_while(|&&b| b != 0).zip(out.iter_mut()) {
        *slot = if b.is_ascii_graphic() && b != b'=' {
            b
        } else {
            b'_'
        };
        n += 1;
    }
    // Only ASCII bytes were written.
    core::str::from_utf8(&out[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_formula() {
        assert_eq!(pattern_word(0, 1), 1);
        assert_eq!(pattern_word(8, 0), 8u64.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        assert_eq!(pattern_word(8, 0), 0xF1BB_CDCB_FA53_E0A8);
        assert_eq!(
            pattern_word(4096, 7),
            4096u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 7
        );
        let mut buf = [0u8; 32];
        fill_pattern(&mut buf, 512, 3);
        assert_eq!(&buf[8..16], &pattern_word(520, 3).to_le_bytes());
        assert_eq!(check_pattern(&buf, 512, 3), None);
        buf[17] ^= 1;
        let m = check_pattern(&buf, 512, 3).unwrap();
        assert_eq!((m.offset, m.expected), (528, pattern_word(528, 3)));
        assert_ne!(m.found, m.expected);
        assert!(check_pattern(&buf, 512, 4).is_some());
        // A different offset is a different pattern.
        assert!(check_pattern(&buf[..8], 0, 3).is_some());
    }

    #[test]
    fn rng_is_bounded_and_seeded() {
        let mut a = Rng::new(1, 0);
        let mut b = Rng::new(1, 0);
        let mut c = Rng::new(1, 1);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        for n in [1, 2, 3, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(a.below(n) < n);
            }
        }
        assert_eq!(a.below(0), 0);
        let mut seen = [false; 8];
        for _ in 0..200 {
            seen[a.below(8) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn ring_layout() {
        assert!(RingLayout::fits(256));
        assert!(!RingLayout::fits(512));
        let l = RingLayout { size: 256 };
        assert_eq!(RingLayout::desc(255), 0xff0);
        assert_eq!(l.avail_slot(256), 0x1004);
        assert_eq!(l.used_elem(257), 0x2000 + 4 + 8);
        // avail ring incl. used_event ends before the used ring; used ring in its page.
        assert!(l.avail_slot(255) + 2 + 2 <= RingLayout::USED);
        assert!(l.used_elem(255) + 8 + 2 <= RingLayout::BYTES);
    }

    #[test]
    fn id_strings() {
        let mut out = [0u8; 20];
        assert_eq!(
            id_string(b"nightshift-disk0\0\0\0\0", &mut out),
            "nightshift-disk0"
        );
        assert_eq!(id_string(b"", &mut out), "");
        assert_eq!(id_string(b"\0abc", &mut out), "");
        assert_eq!(id_string(b"a b=c\xff", &mut out), "a_b_c_");
        assert_eq!(id_string(&[b'x'; 25], &mut out).len(), 20);
    }
}
