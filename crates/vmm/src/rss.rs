//! The VMM's own memory footprint: peak RSS minus what guest RAM accounts for.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

/// Memory use of this process, from /proc/self.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RssReport {
    /// Peak resident set of the whole process (VmHWM), KiB.
    pub peak_kib: u64,
    /// Resident guest RAM now, KiB. Guest RAM is never freed while the VM
    /// lives, so this is also its peak.
    pub guest_kib: u64,
    /// `peak_kib - guest_kib`: the VMM's own peak, apart from guest memory.
    pub vmm_peak_kib: u64,
}

/// `/proc/self/status` and `/proc/self/smaps`, opened once so they can be
/// read again after the thread that reads them is confined by seccomp
/// (which lets it read and seek, not open).
#[derive(Debug)]
pub struct ProcFiles {
    status: File,
    smaps: File,
}

impl ProcFiles {
    /// Opens both files.
    pub fn open() -> std::io::Result<Self> {
        Ok(ProcFiles {
            status: File::open("/proc/self/status")?,
            smaps: File::open("/proc/self/smaps")?,
        })
    }
}

/// Reads `file` from its start again (lseek and read only).
fn reread(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    // Through `Take`: no size hint, so no fstat, only read(2).
    Read::by_ref(file)
        .take(u64::MAX)
        .read_to_string(&mut text)?;
    Ok(text)
}

impl RssReport {
    /// Measures now; `guest` are the host address ranges of guest RAM.
    pub fn measure(guest: &[(usize, usize)]) -> std::io::Result<Self> {
        Self::measure_with(&mut ProcFiles::open()?, guest)
    }

    /// Measures now through files opened earlier.
    pub fn measure_with(files: &mut ProcFiles, guest: &[(usize, usize)]) -> std::io::Result<Self> {
        let status = reread(&mut files.status)?;
        let smaps = reread(&mut files.smaps)?;
        Ok(Self::from_proc(&status, &smaps, guest))
    }

    fn from_proc(status: &str, smaps: &str, guest: &[(usize, usize)]) -> Self {
        let peak_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(kib)
            .unwrap_or(0);
        let guest_kib = guest_rss_kib(smaps, guest);
        RssReport {
            peak_kib,
            guest_kib,
            vmm_peak_kib: peak_kib.saturating_sub(guest_kib),
        }
    }
}

fn kib(field: &str) -> Option<u64> {
    field.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Sums `Rss:` of the smaps entries that lie inside a guest range.
fn guest_rss_kib(smaps: &str, guest: &[(usize, usize)]) -> u64 {
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let range = usize::from_str_radix(a, 16)
                .ok()
                .zip(usize::from_str_radix(b, 16).ok());
            inside = range.is_some_and(|(s, e)| guest.iter().any(|&(gs, ge)| s >= gs && e <= ge));
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if inside {
                total += kib(v).unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mappings_are_subtracted_from_the_peak() {
        let status = "Name:\tx\nVmHWM:\t   10240 kB\nVmRSS:\t 9000 kB\n";
        let smaps = "\
1000-2000 rw-p 00000000 00:00 0 \n\
Rss:                 100 kB\n\
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 \n\
Size:             262144 kB\n\
Rss:                8192 kB\n";
        let r = RssReport::from_proc(status, smaps, &[(0x7f00_0000_0000, 0x7f00_1000_0000)]);
        assert_eq!(
            (r.peak_kib, r.guest_kib, r.vmm_peak_kib),
            (10240, 8192, 2048)
        );
    }

    #[test]
    fn this_process_can_be_measured() {
        let r = RssReport::measure(&[]).unwrap();
        assert!(r.peak_kib > 0);
        assert_eq!(r.guest_kib, 0);
    }
}
