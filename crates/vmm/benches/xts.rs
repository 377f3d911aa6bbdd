//! The disk cipher's cost per request size: `xts-mode` (one cipher call per
//! 16-byte block) against `vmm::virtio::block::xts` (one call per run of
//! sectors), both AES-256-XTS over whole 512-byte sectors, one pass, on a
//! buffer already in cache. Throughput is in bytes of sector data.
//!
//! `cargo bench -p vmm --bench xts`

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmm::virtio::block::xts::{Direction, Xts};
use xts_mode::{get_tweak_default, Xts128};

fn cipher(c: &mut Criterion) {
    let key: [u8; 64] = std::array::from_fn(|i| i as u8);
    let ours = Xts::new(&key);
    let theirs = Xts128::new(
        Aes256::new(&Array::try_from(&key[..32]).unwrap()),
        Aes256::new(&Array::try_from(&key[32..]).unwrap()),
    );
    let mut group = c.benchmark_group("xts_encrypt");
    for size in [512usize, 4096, 65536] {
        let mut buf = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("xts-mode", size), &size, |b, _| {
            b.iter(|| theirs.encrypt_area(&mut buf, 512, 1000, get_tweak_default))
        });
        group.bench_with_input(BenchmarkId::new("batched", size), &size, |b, _| {
            b.iter(|| ours.apply(Direction::Encrypt, &mut buf, 1000, 1))
        });
    }
    group.finish();
}

criterion_group!(benches, cipher);
criterion_main!(benches);
