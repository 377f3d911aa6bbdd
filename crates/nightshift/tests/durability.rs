//! Kill -9 durability (issue 9 item 7): the test guest's `seq-write` mode
//! writes self-describing, checksummed sectors in order and prints
//! `flushed seq=N` after each FLUSH that completed; the VMM is killed with
//! SIGKILL at a random point; then every block below the last reported N must
//! read back intact and no sector anywhere may be torn or misplaced.
//!
//! The sector format is docs/guest-abi.md's (`testguest::blk::seq_sector`),
//! re-implemented here: the guest crate is `no_std` and built separately.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TRIALS: u64 = 100;
const BLOCK: usize = 4096;
const SECTORS_PER_BLOCK: usize = BLOCK / 512;
const IMAGE: u64 = 4 << 20;
/// Longest the kill is delayed once the guest's device is up.
const MAX_DELAY_MS: u64 = 250;
const SEQ_MAGIC: u64 = 0x5452_5751_4553_534E;
const POLICIES: [&str; 3] = ["workers", "inline", "idle"];

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn word(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().unwrap())
}

/// The guest's sector `index` of block `seq` for run `nonce`.
fn expected_sector(nonce: u64, seq: u64, index: u32) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[0..8].copy_from_slice(&SEQ_MAGIC.to_le_bytes());
    s[8..16].copy_from_slice(&nonce.to_le_bytes());
    s[16..24].copy_from_slice(&seq.to_le_bytes());
    s[24..28].copy_from_slice(&index.to_le_bytes());
    s[28..32].copy_from_slice(&(SECTORS_PER_BLOCK as u32).to_le_bytes());
    let seed = nonce ^ seq ^ (u64::from(index) << 32);
    for (i, w) in s[32..504].chunks_exact_mut(8).enumerate() {
        let o = 32 + 8 * i as u64;
        w.copy_from_slice(&(o.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed).to_le_bytes());
    }
    let sum = fnv1a64(&s[..504]);
    s[504..].copy_from_slice(&sum.to_le_bytes());
    s
}

/// xorshift64*: kill points and nonces (the seed is printed for a rerun).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What one trial saw.
struct Trial {
    flushed_blocks: u64,
    written_sectors: u64,
    finished: bool,
}

/// Checks the image after a kill: blocks below `flushed` intact, every sector
/// either never written or a whole sector of this run in its own place.
fn check_image(image: &[u8], nonce: u64, flushed: u64, what: &str) -> u64 {
    let mut written = 0;
    for (n, sector) in image.chunks_exact(512).enumerate() {
        let (block, index) = (
            (n / SECTORS_PER_BLOCK) as u64,
            (n % SECTORS_PER_BLOCK) as u32,
        );
        if block < flushed {
            assert!(
                sector == expected_sector(nonce, block, index),
                "{what}: block {block} was reported flushed but sector {index} does not hold it"
            );
        }
        if sector.iter().all(|&b| b == 0) {
            continue;
        }
        // Not torn, not misplaced: the whole sector this position gets, or nothing.
        assert!(
            word(sector, 16) == block && sector == expected_sector(nonce, block, index),
            "{what}: sector {n} is torn or misplaced (seq {}, checksum {})",
            word(sector, 16),
            if fnv1a64(&sector[..504]) == word(sector, 504) {
                "ok"
            } else {
                "bad"
            }
        );
        written += 1;
    }
    written
}

fn trial(n: u64, rng: &mut Rng) -> Trial {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seq.img");
    std::fs::File::create(&img).unwrap().set_len(IMAGE).unwrap();
    let nonce = rng.next();
    let policy = POLICIES[(n % 3) as usize];
    let what = format!("trial {n} (policy {policy}, nonce {nonce:#x})");
    let cmdline = format!("workload=blk blk_mode=seq-write blk_seed={nonce} blk_qd=4 blk_burst=8");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["run", "--vcpus", "1", "--policy", policy, "--disk"])
        .arg(&img)
        .args(["--cmdline", &cmdline])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nightshift");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Kill at a random point once the guest's device is up.
    let up_by = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    loop {
        let left = up_by.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let up = l.starts_with("blk dev=");
                lines.push(l);
                if up {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("{what}: the guest's device did not come up: {lines:?}");
            }
        }
    }
    std::thread::sleep(Duration::from_millis(rng.next() % (MAX_DELAY_MS + 1)));
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let flushed = lines
        .iter()
        .filter_map(|l| l.strip_prefix("flushed seq="))
        // The kill may cut the last line anywhere: a cut number is only
        // ever smaller than the one the guest reported (a weaker claim).
        .filter_map(|v| v.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let finished = lines.iter().any(|l| l.starts_with("result "));
    let image = std::fs::read(&img).unwrap();
    let written_sectors = check_image(&image, nonce, flushed, &what);
    Trial {
        flushed_blocks: flushed,
        written_sectors,
        finished,
    }
}

#[test]
fn every_block_reported_flushed_survives_kill_9_and_no_sector_is_torn() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let seed = std::env::var("NIGHTSHIFT_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    eprintln!("kill -9 trials: seed {seed} (NIGHTSHIFT_KILL9_SEED reruns them)");
    let mut rng = Rng(seed);
    let (mut with_flushes, mut blocks, mut sectors, mut finished) = (0, 0, 0, 0);
    for n in 0..TRIALS {
        let t = trial(n, &mut rng);
        with_flushes += u64::from(t.flushed_blocks > 0);
        blocks += t.flushed_blocks;
        sectors += t.written_sectors;
        finished += u64::from(t.finished);
    }
    eprintln!(
        "kill -9: {TRIALS} trials, {with_flushes} killed after at least one flush, \
         {blocks} flushed blocks checked intact, {sectors} written sectors checked whole, \
         {finished} finished before the kill"
    );
    // The kills must land while the guest writes, or the test proves nothing.
    assert!(with_flushes >= TRIALS / 2, "too few trials saw a flush");
    // On a quiet host the guest may finish before many kills: a quarter of
    // the trials killed mid-run still exercises every window.
    assert!(
        finished <= TRIALS * 3 / 4,
        "too many guests finished before the kill"
    );
}

#[test]
fn the_check_catches_a_lost_flushed_block_and_a_torn_sector() {
    // The checker itself can fail: a reported-flushed block missing, a half-new sector.
    let nonce = 9;
    let mut image = vec![0u8; 4 * BLOCK];
    for block in 0..2u64 {
        for i in 0..SECTORS_PER_BLOCK {
            let at = (block as usize * SECTORS_PER_BLOCK + i) * 512;
            image[at..at + 512].copy_from_slice(&expected_sector(nonce, block, i as u32));
        }
    }
    assert_eq!(check_image(&image, nonce, 2, "good"), 16);
    let lost = std::panic::catch_unwind(|| check_image(&image, nonce, 3, "lost"));
    assert!(lost.is_err(), "a missing flushed block went unnoticed");
    let mut torn = image.clone();
    torn[BLOCK + 300] ^= 1;
    let torn = std::panic::catch_unwind(|| check_image(&torn, nonce, 0, "torn"));
    assert!(torn.is_err(), "a torn sector went unnoticed");
}
