//! Where a VMM process's CPU time goes, by thread class, sampled from /proc.
//!
//! Method: every `period` the sampler reads `/proc/PID/task/*/schedstat`
//! (time on CPU in ns, exact) and `comm` (the thread's name) of each watched
//! process. From consecutive samples it gets each thread's CPU time in the
//! window, and so:
//! - CPU time by class (vCPU threads, device-work threads, other VMM threads),
//!   and time runnable but waiting for a CPU (schedstat's second field);
//! - the VM's footprint in a window: the sum of its threads' CPU time divided by
//!   the window (cores in use), and its peak over the run;
//! - threads running at once: threads that were on a CPU for more than half
//!   of the window, maximum over windows. With 2 ms windows this is a sampled
//!   estimate, stated as such in the output.
//!
//! Context switches come from `/proc/PID/task/*/status` at the end.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a thread does, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadClass {
    /// Runs a guest vCPU (nightshift `vcpuN`, QEMU `CPU N/KVM`).
    Vcpu,
    /// Runs device work off the vCPUs (nightshift `ns-work*`, QEMU iothreads and workers).
    Device,
    /// Anything else of the VMM (main thread, notifier, QEMU's main loop).
    Other,
}

impl ThreadClass {
    /// Classifies a thread by its `comm`.
    pub fn of(comm: &str) -> Self {
        if comm.starts_with("vcpu") || (comm.starts_with("CPU ") && comm.ends_with("/KVM")) {
            ThreadClass::Vcpu
        } else if comm.starts_with("ns-work") || comm.starts_with("IO ") || comm == "worker" {
            ThreadClass::Device
        } else {
            ThreadClass::Other
        }
    }
}

/// CPU use of one watched process over a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessCpu {
    /// CPU seconds by class.
    pub cpu_s: HashMap<ThreadClass, f64>,
    /// Seconds runnable but waiting for a CPU (schedstat's run-queue wait), by class.
    pub wait_s: HashMap<ThreadClass, f64>,
    /// CPU seconds by host CPU and thread name (`comm`): each window's time of a
    /// thread is put on the CPU it was last on when sampled (an estimate: a thread
    /// that moved within the window is put on one CPU).
    pub on_cpu_s: HashMap<usize, HashMap<String, f64>>,
    /// Highest footprint in one window, cores.
    pub peak_cores: f64,
    /// Most threads on a CPU for over half of one window.
    pub peak_threads_running: usize,
    /// Voluntary + involuntary context switches of all threads.
    pub context_switches: u64,
}

#[derive(Default)]
struct Watched {
    names: HashMap<u32, String>,
    /// Each thread's last (time on CPU, time waiting on a run queue), ns.
    last: HashMap<u32, (u64, u64)>,
    classes: HashMap<u32, ThreadClass>,
    result: ProcessCpu,
    switches: HashMap<u32, u64>,
}

/// Samples some processes' threads until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<HashMap<u32, Watched>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `pids` every `period`.
    pub fn start(pids: &[u32], period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let state: Arc<Mutex<HashMap<u32, Watched>>> = Arc::new(Mutex::new(
            pids.iter().map(|&p| (p, Watched::default())).collect(),
        ));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || {
                let mut last_t = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    let now = Instant::now();
                    let window = now.duration_since(last_t).as_nanos() as u64;
                    last_t = now;
                    let mut st = state.lock().unwrap();
                    for (pid, w) in st.iter_mut() {
                        sample(*pid, w, window);
                    }
                }
            })
        };
        Sampler {
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// Stops and returns each process's CPU use.
    pub fn finish(mut self) -> HashMap<u32, ProcessCpu> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let st = std::mem::take(&mut *self.state.lock().unwrap());
        st.into_iter()
            .map(|(pid, mut w)| {
                w.result.context_switches = w.switches.values().sum();
                (pid, w.result)
            })
            .collect()
    }
}

fn sample(pid: u32, w: &mut Watched, window_ns: u64) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    let (mut busy_ns, mut running) = (0u64, 0usize);
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = task.path();
        let Some((ns, wait_ns)) = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| {
                let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
                Some((f.next()??, f.next()??))
            })
        else {
            continue;
        };
        // A new thread carries its parent's name until it renames itself:
        // only a vCPU or device class is final.
        let class = match w.classes.get(&tid) {
            Some(c) if *c != ThreadClass::Other => *c,
            _ => {
                let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                let c = ThreadClass::of(comm.trim());
                w.classes.insert(tid, c);
                w.names.insert(tid, comm.trim().to_string());
                c
            }
        };
        if let Some(cs) = context_switches(&dir) {
            w.switches.insert(tid, cs);
        }
        let (prev, prev_wait) = w.last.insert(tid, (ns, wait_ns)).unwrap_or((ns, wait_ns));
        let delta = ns.saturating_sub(prev);
        *w.result.cpu_s.entry(class).or_default() += delta as f64 / 1e9;
        *w.result.wait_s.entry(class).or_default() +=
            wait_ns.saturating_sub(prev_wait) as f64 / 1e9;
        if let (true, Some(cpu)) = (delta > 0, last_cpu(&dir)) {
            let name = w.names.get(&tid).cloned().unwrap_or_default();
            *w.result
                .on_cpu_s
                .entry(cpu)
                .or_default()
                .entry(name)
                .or_default() += delta as f64 / 1e9;
        }
        busy_ns += delta;
        if delta * 2 > window_ns {
            running += 1;
        }
    }
    if window_ns > 0 {
        w.result.peak_cores = w.result.peak_cores.max(busy_ns as f64 / window_ns as f64);
    }
    w.result.peak_threads_running = w.result.peak_threads_running.max(running);
}

/// The host's CPU time (all CPUs, user + system) and this process's own at one
/// moment: the background load over a run is what the host used beyond this
/// process and the VMMs it watched (other users of a shared machine).
pub struct HostCpu {
    busy_s: f64,
    own_s: f64,
    at: Instant,
}

impl HostCpu {
    /// Now, from /proc/stat and /proc/self/stat (None if unreadable).
    pub fn now() -> Option<Self> {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // user, nice, system (guest time is inside user).
        let busy_s = cpu.get(..3)?.iter().sum::<f64>() / tick;
        let own = fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<f64> = own
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
        let own_s = (fields.get(11)? + fields.get(12)?) / tick;
        Some(Self {
            busy_s,
            own_s,
            at: Instant::now(),
        })
    }

    /// Cores used on average since `self` by everything except this process and
    /// `vmm_cpu_s` of VMM time.
    pub fn others_since(&self, vmm_cpu_s: f64) -> Option<f64> {
        let now = Self::now()?;
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let others = (now.busy_s - self.busy_s) - (now.own_s - self.own_s) - vmm_cpu_s;
        (wall > 0.0).then(|| (others / wall).max(0.0))
    }
}

/// The CPU a thread last ran on (field 39 of its `stat`).
fn last_cpu(task_dir: &std::path::Path) -> Option<usize> {
    let stat = fs::read_to_string(task_dir.join("stat")).ok()?;
    // Fields after the name start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(39 - 3)?
        .parse()
        .ok()
}

fn context_switches(task_dir: &std::path::Path) -> Option<u64> {
    let status = fs::read_to_string(task_dir.join("status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_classified_by_name() {
        assert_eq!(ThreadClass::of("vcpu0"), ThreadClass::Vcpu);
        assert_eq!(ThreadClass::of("CPU 1/KVM"), ThreadClass::Vcpu);
        assert_eq!(ThreadClass::of("ns-work1"), ThreadClass::Device);
        assert_eq!(ThreadClass::of("IO iothread0"), ThreadClass::Device);
        assert_eq!(ThreadClass::of("ns-notify"), ThreadClass::Other);
        assert_eq!(ThreadClass::of("qemu-system-x86"), ThreadClass::Other);
    }

    #[test]
    fn a_busy_thread_shows_up_as_cpu_time() {
        let pid = std::process::id();
        let sampler = Sampler::start(&[pid], Duration::from_millis(2));
        let spin = std::thread::Builder::new()
            .name("vcpu-spin".into())
            .spawn(|| {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < Duration::from_millis(200) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .unwrap();
        spin.join().unwrap();
        let cpu = &sampler.finish()[&pid];
        assert!(cpu.cpu_s[&ThreadClass::Vcpu] > 0.0, "{cpu:?}");
        assert!(cpu.context_switches > 0);
        // Its time is also found on some CPU, under its name.
        let on_cpus: f64 = cpu
            .on_cpu_s
            .values()
            .filter_map(|names| names.get("vcpu-spin"))
            .sum();
        assert!(on_cpus > 0.0, "{cpu:?}");
        assert!(cpu.wait_s.contains_key(&ThreadClass::Vcpu), "{cpu:?}");
    }
}
