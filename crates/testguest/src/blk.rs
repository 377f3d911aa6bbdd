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

/// `blk_mode=seq-write` sectors: each 512-byte sector of block `seq` says which block,
/// which sector of it and which run (`nonce`) wrote it, and ends in a checksum, so a torn
/// or misplaced sector is detectable on its own. Layout (little-endian): 0..8 `SEQ_MAGIC`,
/// 8..16 nonce, 16..24 seq, 24..28 sector index in the block, 28..32 sectors per block,
/// 32..504 filler words `pattern_word(32 + 8 i, nonce ^ seq ^ (index << 32))`, 504..512
/// FNV-1a 64 of bytes 0..504. docs/guest-abi.md has the same.
pub const SEQ_MAGIC: u64 = 0x5452_5751_4553_534E; // "NSSEQWRT"

/// Bytes of a sector covered by its checksum.
const SEQ_SUMMED: usize = 504;

/// FNV-1a 64.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills the 512-byte `sector` as sector `index` of `sectors` of block `seq`.
pub fn seq_sector(sector: &mut [u8], nonce: u64, seq: u64, index: u32, sectors: u32) {
    sector[0..8].copy_from_slice(&SEQ_MAGIC.to_le_bytes());
    sector[8..16].copy_from_slice(&nonce.to_le_bytes());
    sector[16..24].copy_from_slice(&seq.to_le_bytes());
    sector[24..28].copy_from_slice(&index.to_le_bytes());
    sector[28..32].copy_from_slice(&sectors.to_le_bytes());
    let seed = nonce ^ seq ^ (u64::from(index) << 32);
    fill_pattern(&mut sector[32..SEQ_SUMMED], 32, seed);
    let sum = fnv1a64(&sector[..SEQ_SUMMED]);
    sector[SEQ_SUMMED..512].copy_from_slice(&sum.to_le_bytes());
}

/// What a sector read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqSector {
    /// All zero: never written.
    Empty,
    /// A whole sector: (nonce, seq, index).
    Written(u64, u64, u32),
    /// Neither: a torn or foreign sector.
    Torn,
}

/// Classifies a 512-byte sector (see [`seq_sector`]).
pub fn check_seq_sector(sector: &[u8]) -> SeqSector {
    if sector.iter().all(|&b| b == 0) {
        return SeqSector::Empty;
    }
    let word = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap_or([0; 8]));
    let sum_ok = fnv1a64(&sector[..SEQ_SUMMED]) == word(SEQ_SUMMED);
    if !sum_ok || word(0) != SEQ_MAGIC {
        return SeqSector::Torn;
    }
    let index = u32::from_le_bytes(sector[24..28].try_into().unwrap_or([0; 4]));
    SeqSector::Written(word(8), word(16), index)
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
    fn seq_sectors_round_trip_and_show_tears() {
        let mut sector = [0u8; 512];
        assert_eq!(check_seq_sector(&sector), SeqSector::Empty);
        seq_sector(&mut sector, 7, 42, 3, 8);
        assert_eq!(check_seq_sector(&sector), SeqSector::Written(7, 42, 3));
        // Half old, half new: the checksum no longer matches.
        let mut other = [0u8; 512];
        seq_sector(&mut other, 7, 43, 3, 8);
        sector[256..].copy_from_slice(&other[256..]);
        assert_eq!(check_seq_sector(&sector), SeqSector::Torn);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
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
