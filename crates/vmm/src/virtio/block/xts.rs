//! AES-256-XTS over whole 512-byte sectors (IEEE 1619, as dm-crypt's
//! `aes-xts-plain64` and QEMU's LUKS use it), batched so the block cipher
//! sees many blocks per call.
//!
//! Why not `xts-mode` alone: it calls the cipher once per 16-byte block. The
//! `aes` crate picks its backend at run time; its wide (VAES) backends set up
//! round keys and lanes on every call, so one call per block spends most of
//! its time on that setup. Measured here (`cargo bench -p vmm --bench xts`):
//! see the numbers in docs/results/README.md. This module does the same
//! transform with one `encrypt_blocks`/`decrypt_blocks` call per run of up
//! to [`BATCH_SECTORS`] sectors, and `xts-mode` stays as the reference the
//! tests compare against byte for byte.
//!
//! Sectors are whole (512 bytes = 32 blocks), so there is no ciphertext
//! stealing. The tweak of sector `n` is `n` as a 128-bit little-endian
//! number (plain64), encrypted with the second key; each next block's tweak
//! is the previous one multiplied by α in GF(2¹²⁸).

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::request::SECTOR_SIZE;

/// Bytes in one cipher block.
const BLOCK: usize = 16;
/// Cipher blocks in one sector.
const BLOCKS_PER_SECTOR: usize = SECTOR_SIZE as usize / BLOCK;
/// Sectors transformed per batch: 4 KiB of tweaks live on the stack.
pub const BATCH_SECTORS: usize = 8;

type Block = Array<u8, aes::cipher::consts::U16>;

/// An AES-256-XTS key pair.
pub struct Xts {
    data: Aes256,
    tweak: Aes256,
}

/// Which way [`Xts::apply`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext to ciphertext.
    Encrypt,
    /// Ciphertext to plaintext.
    Decrypt,
}

impl Xts {
    /// A cipher from 64 key bytes: the data key, then the tweak key.
    pub fn new(key: &[u8; 64]) -> Xts {
        let (data, tweak) = key.split_at(32);
        Xts {
            data: Aes256::new(&Array::try_from(data).expect("32-byte half")),
            tweak: Aes256::new(&Array::try_from(tweak).expect("32-byte half")),
        }
    }

    /// Transforms `buf`, whose first sector is `first_sector`, `passes` times.
    /// Only whole sectors are transformed; callers pass whole sectors (a
    /// trailing partial sector is left as it is).
    pub fn apply(&self, dir: Direction, buf: &mut [u8], first_sector: u128, passes: u32) {
        let (blocks, _) = Block::slice_as_chunks_mut(buf);
        let whole = blocks.len() / BLOCKS_PER_SECTOR * BLOCKS_PER_SECTOR;
        let mut tweaks = [Block::default(); BATCH_SECTORS * BLOCKS_PER_SECTOR];
        let mut sector = first_sector;
        for run in blocks[..whole].chunks_mut(BATCH_SECTORS * BLOCKS_PER_SECTOR) {
            let sectors = run.len() / BLOCKS_PER_SECTOR;
            let tweaks = &mut tweaks[..run.len()];
            self.sector_tweaks(sector, sectors, tweaks);
            for _ in 0..passes {
                xor(run, tweaks);
                match dir {
                    Direction::Encrypt => self.data.encrypt_blocks(run),
                    Direction::Decrypt => self.data.decrypt_blocks(run),
                }
                xor(run, tweaks);
            }
            sector = sector.wrapping_add(sectors as u128);
        }
    }

    /// Fills `out` with the tweak of every block of `sectors` sectors from `first`.
    fn sector_tweaks(&self, first: u128, sectors: usize, out: &mut [Block]) {
        let mut initial = [Block::default(); BATCH_SECTORS];
        for (i, t) in initial[..sectors].iter_mut().enumerate() {
            *t = Array(first.wrapping_add(i as u128).to_le_bytes());
        }
        self.tweak.encrypt_blocks(&mut initial[..sectors]);
        for (start, per_sector) in initial.iter().zip(out.chunks_mut(BLOCKS_PER_SECTOR)) {
            let mut t = u128::from_le_bytes(start.0);
            for block in per_sector {
                block.0 = t.to_le_bytes();
                t = times_alpha(t);
            }
        }
    }
}

/// Multiplies a tweak by α (x) in GF(2¹²⁸) modulo x¹²⁸ + x⁷ + x² + x + 1,
/// the tweak read as a little-endian number.
fn times_alpha(t: u128) -> u128 {
    let carry = (t >> 127) as u8;
    (t << 1) ^ u128::from(carry * 0x87)
}

fn xor(blocks: &mut [Block], tweaks: &[Block]) {
    for (b, t) in blocks.iter_mut().zip(tweaks) {
        b.0 = (u128::from_ne_bytes(b.0) ^ u128::from_ne_bytes(t.0)).to_ne_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xts_mode::{get_tweak_default, Xts128};

    fn reference(key: &[u8; 64]) -> Xts128<Aes256> {
        let (k1, k2) = key.split_at(32);
        Xts128::new(
            Aes256::new(&Array::try_from(k1).unwrap()),
            Aes256::new(&Array::try_from(k2).unwrap()),
        )
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[3])
            .collect()
    }

    #[test]
    fn matches_xts_mode_byte_for_byte_in_both_directions() {
        let key: [u8; 64] = std::array::from_fn(|i| (i * 13 + 5) as u8);
        let ours = Xts::new(&key);
        let theirs = reference(&key);
        // Runs shorter than, equal to, and longer than one batch; sector
        // numbers around the 64-bit boundary (plain64 tweaks are 128-bit here).
        for sectors in [1usize, 7, 8, 9, 17, 64] {
            for first in [0u128, 3, u64::MAX as u128 - 2, 1 << 100] {
                let plain = pattern(sectors * 512, sectors as u32);
                let mut a = plain.clone();
                let mut b = plain.clone();
                ours.apply(Direction::Encrypt, &mut a, first, 1);
                theirs.encrypt_area(&mut b, 512, first, get_tweak_default);
                assert_eq!(a, b, "encrypt {sectors} sectors from {first}");
                ours.apply(Direction::Decrypt, &mut a, first, 1);
                assert_eq!(a, plain, "decrypt {sectors} sectors from {first}");
            }
        }
    }

    #[test]
    fn passes_repeat_the_whole_transform() {
        let key = [7u8; 64];
        let ours = Xts::new(&key);
        let theirs = reference(&key);
        let plain = pattern(4096, 1);
        let mut a = plain.clone();
        let mut b = plain.clone();
        ours.apply(Direction::Encrypt, &mut a, 42, 3);
        for _ in 0..3 {
            theirs.encrypt_area(&mut b, 512, 42, get_tweak_default);
        }
        assert_eq!(a, b);
        ours.apply(Direction::Decrypt, &mut a, 42, 3);
        assert_eq!(a, plain);
    }

    #[test]
    fn a_trailing_partial_sector_is_left_alone() {
        let ours = Xts::new(&[1; 64]);
        let plain = pattern(512 + 100, 9);
        let mut a = plain.clone();
        ours.apply(Direction::Encrypt, &mut a, 0, 1);
        assert_ne!(a[..512], plain[..512]);
        assert_eq!(a[512..], plain[512..]);
    }

    #[test]
    fn alpha_carries_into_the_reduction_polynomial() {
        assert_eq!(times_alpha(1), 2);
        assert_eq!(times_alpha(1 << 127), 0x87);
        assert_eq!(times_alpha((1 << 127) | 1), 0x87 ^ 2);
    }
}
