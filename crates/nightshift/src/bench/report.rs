//! Turning runs into metrics, metrics into medians, medians into a table.

use std::collections::BTreeMap;

use serde::Serialize;

use super::parse::num;
use super::runner::VmOutcome;
use super::scenario::Variant;
use super::threads::ThreadClass;

/// The numbers of one run of one (scenario, variant).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunMetrics {
    pub scenario: String,
    pub variant: String,
    pub rep: usize,
    /// A network scenario (its own table).
    pub net: bool,
    /// Compute rate relative to the solo run, percent.
    pub compute_pct: Option<f64>,
    /// The I/O vCPU's own computing while its requests are pending (poll
    /// mode), relative to one vCPU computing in the solo run, percent.
    pub io_vcpu_pct: Option<f64>,
    /// Block requests per second (all I/O vCPUs).
    pub iops: Option<f64>,
    /// Guest-measured request latency percentiles, µs (worst I/O vCPU).
    pub lat_p10_us: Option<f64>,
    pub lat_p25_us: Option<f64>,
    pub lat_p50_us: Option<f64>,
    pub lat_p75_us: Option<f64>,
    pub lat_p90_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
    pub lat_p999_us: Option<f64>,
    /// Background scrub throughput, MiB/s (maintenance scenario).
    pub scrub_mib_s: Option<f64>,
    /// CPU seconds of the VMM processes by thread class.
    pub cpu_vcpu_s: f64,
    pub cpu_device_s: f64,
    pub cpu_other_s: f64,
    /// Seconds the VMM processes' threads were runnable but waiting for a CPU, by class.
    pub wait_vcpu_s: f64,
    pub wait_device_s: f64,
    pub wait_other_s: f64,
    /// Most threads of the I/O VM on a CPU at once (sampled).
    pub peak_threads: f64,
    /// vCPUs of the I/O VM (the bound `peak_threads` is compared with).
    pub io_vm_vcpus: f64,
    /// Context switches of all VMM threads.
    pub ctx_switches: f64,
    /// idlework kicks sent and useful (nightshift only).
    pub kicks_sent: Option<f64>,
    pub kicks_useful: Option<f64>,
    /// Pickup latency, µs: from the moment the VMM knew a vCPU halted with
    /// work queued for it to the start of the first item it ran there
    /// (idlework's `pickup`; worst VM; nightshift's idle policy only).
    pub pickup_p50_us: Option<f64>,
    pub pickup_p99_us: Option<f64>,
    pub pickup_p999_us: Option<f64>,
    /// Queue wait, µs: from an item's submission to the start of its run,
    /// wherever it ran (idlework's `wait`; worst VM; nightshift only). Under
    /// `idle`, wait minus pickup is the time until the vCPU halted.
    pub wait_p50_us: Option<f64>,
    pub wait_p99_us: Option<f64>,
    /// Signals sent to vCPU threads to bring them out of `KVM_RUN`, and plain
    /// wakes of vCPU threads halted in userspace (nightshift only).
    pub signal_kicks: Option<f64>,
    pub plain_wakes: Option<f64>,
    /// Userspace irqchip: EOIs made through PV EOI (no exit), and halts whose
    /// wake came while the vCPU thread polled (no sleep).
    pub pv_eois: Option<f64>,
    pub halt_polls_ok: Option<f64>,
    /// Device-work items by place (nightshift only).
    pub ran_executor: Option<f64>,
    pub ran_worker: Option<f64>,
    pub ran_inline: Option<f64>,
    /// Network (host-measured): UDP round trips per second and their percentiles, µs.
    pub rr_per_s: Option<f64>,
    pub rtt_p10_us: Option<f64>,
    pub rtt_p25_us: Option<f64>,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p75_us: Option<f64>,
    pub rtt_p90_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub rtt_p999_us: Option<f64>,
    /// Round trips with no answer within 1 s.
    pub rr_lost: Option<f64>,
    /// TCP throughput host → guest and guest → host, Mbit/s.
    pub to_guest_mbit_s: Option<f64>,
    pub from_guest_mbit_s: Option<f64>,
    /// VMM start → the guest's network up, ms.
    pub net_up_ms: Option<f64>,
    /// Per network operation (a round trip, or a MiB moved either way): the
    /// vCPUs' exits to the VMM (nightshift only) and the guest's device interrupts.
    pub exits_per_op: Option<f64>,
    pub guest_irqs_per_op: Option<f64>,
    /// CPU seconds the VMM took from the computing vCPU: its other threads on that
    /// vCPU's host CPU, and device work on the vCPU's own thread.
    pub vmm_on_compute_cpu_s: Option<f64>,
    /// Cores the rest of the host used during the run (background load), and
    /// during its solo run.
    pub background_cores: Option<f64>,
    pub solo_background_cores: Option<f64>,
    /// The host's traffic thread: on a CPU and waiting for one, ms.
    pub host_cpu_ms: Option<f64>,
    pub host_wait_ms: Option<f64>,
}

/// A scenario's solo run: the compute rate the others are compared with.
pub struct Solo {
    /// Sum of `iters_per_ms` over its computing CPUs, and their mean.
    pub rate: f64,
    pub rate_per_cpu: f64,
    /// Cores the rest of the host used meanwhile.
    pub background_cores: Option<f64>,
}

impl Solo {
    /// The solo run's numbers (None if it reported no compute rate).
    pub fn of(vms: &[VmOutcome]) -> Option<Self> {
        let rate = compute_rate(vms)?;
        Some(Solo {
            rate,
            rate_per_cpu: compute_rate_per_cpu(vms).unwrap_or(rate),
            background_cores: vms.iter().find_map(|vm| vm.background_cores),
        })
    }
}

/// CPU seconds the VMM took from a computing vCPU (summed over computing vCPUs),
/// whatever else the host ran: its other threads' time on that vCPU's host CPU
/// (sampled per 2 ms, see `threads`) plus the device work the vCPU's own thread
/// ran between two guest runs (nightshift's `idle_busy_ns`).
fn vmm_on_compute_cpu(vms: &[VmOutcome]) -> Option<f64> {
    let mut total = None;
    for vm in vms {
        let computing = vm
            .results
            .iter()
            .filter(|r| r.get("workload").is_some_and(|w| w == "compute"))
            .filter_map(|r| r.get("cpu"));
        for k in computing {
            let me = |name: &str| name == format!("vcpu{k}") || name == format!("CPU {k}/KVM");
            let own = |cpu: &usize| {
                vm.cpu.on_cpu_s[cpu]
                    .iter()
                    .filter(|(n, _)| me(n))
                    .map(|(_, s)| *s)
                    .sum::<f64>()
            };
            // Its host CPU: where it ran most (it is pinned).
            let Some(host_cpu) = vm
                .cpu
                .on_cpu_s
                .keys()
                .max_by(|a, b| own(a).total_cmp(&own(b)))
            else {
                continue;
            };
            let others: f64 = vm.cpu.on_cpu_s[host_cpu]
                .iter()
                .filter(|(n, _)| !me(n))
                .map(|(_, s)| *s)
                .sum();
            let own_work = vm
                .report
                .as_ref()
                .and_then(|r| {
                    r["vcpus"]
                        .as_array()?
                        .iter()
                        .find(|v| v["vcpu"].as_u64().is_some_and(|i| i.to_string() == *k))?
                        ["idle_busy_ns"]
                        .as_f64()
                })
                .unwrap_or(0.0);
            *total.get_or_insert(0.0) += others + own_work / 1e9;
        }
    }
    total
}

/// `iters_per_ms` of every CPU that ran the `compute` workload.
fn compute_rates(vms: &[VmOutcome]) -> Vec<f64> {
    vms.iter()
        .flat_map(|vm| &vm.results)
        .filter(|r| r.get("workload").is_some_and(|w| w == "compute"))
        .filter_map(|r| num(r, "iters_per_ms"))
        .collect()
}

/// Mean `iters_per_ms` of one computing CPU.
pub fn compute_rate_per_cpu(vms: &[VmOutcome]) -> Option<f64> {
    let rates = compute_rates(vms);
    (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
}

/// Sum of `iters_per_ms` over the compute CPUs of the VMs that compute.
pub fn compute_rate(vms: &[VmOutcome]) -> Option<f64> {
    let rates = compute_rates(vms);
    (!rates.is_empty()).then(|| rates.iter().sum())
}

fn max_of(vals: impl Iterator<Item = f64>) -> Option<f64> {
    vals.fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
}

fn sum_opt(vals: impl Iterator<Item = f64>) -> Option<f64> {
    vals.fold(None, |s, v| Some(s.unwrap_or(0.0) + v))
}

fn report_sum(vms: &[VmOutcome], f: impl Fn(&serde_json::Value) -> Option<f64>) -> Option<f64> {
    sum_opt(vms.iter().filter_map(|vm| vm.report.as_ref()).filter_map(f))
}

impl RunMetrics {
    /// The metrics of one run; `solo` = the scenario's solo run, where it has one.
    pub fn from_run(
        scenario: &str,
        variant: &Variant,
        rep: usize,
        vms: &[VmOutcome],
        solo: Option<&Solo>,
    ) -> Self {
        let blk = || {
            vms.iter()
                .flat_map(|vm| &vm.results)
                .filter(|r| r.get("workload").is_some_and(|w| w == "blk"))
        };
        let cpu = |class| {
            vms.iter()
                .map(|vm| vm.cpu.cpu_s.get(&class).copied().unwrap_or(0.0))
                .sum()
        };
        let wait = |class| {
            vms.iter()
                .map(|vm| vm.cpu.wait_s.get(&class).copied().unwrap_or(0.0))
                .sum()
        };
        let io_vm = vms
            .iter()
            .find(|vm| {
                vm.results
                    .iter()
                    .any(|r| r.get("workload").is_some_and(|w| w == "blk"))
            })
            .or_else(|| vms.first());
        let work = |v: &serde_json::Value, place: &str| -> Option<f64> {
            let w = &v["work"];
            let items = |runner: &serde_json::Value| {
                runner["run"]["items"].as_f64().or(runner["items"].as_f64())
            };
            match place {
                "inline" => items(&w["inline"]),
                "executor" => w["executors"]
                    .as_array()
                    .map(|a| a.iter().filter_map(items).sum()),
                _ => w["workers"]
                    .as_array()
                    .map(|a| a.iter().filter_map(items).sum()),
            }
        };
        let kicks = |field: &str| {
            report_sum(vms, |v| {
                v["work"]["executors"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e[field].as_f64()).sum())
            })
        };
        let latency = |which: &str, field: &str| {
            let worst = vms
                .iter()
                .filter_map(|vm| vm.report.as_ref())
                .filter(|v| v["work"][which]["count"].as_u64().is_some_and(|n| n > 0))
                .filter_map(|v| v["work"][which][field].as_f64());
            max_of(worst).map(|ns| ns / 1000.0)
        };
        let pickup = |field: &str| latency("pickup", field);
        let per_vcpu = |field: &str| {
            report_sum(vms, |v| {
                v["vcpus"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c[field].as_f64()).sum())
            })
        };
        let scrub_bytes = report_sum(vms, |v| {
            v["scrubs"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["bytes"].as_f64()).sum())
        });
        let ms = vms
            .iter()
            .flat_map(|vm| &vm.results)
            .filter_map(|r| num(r, "ms"))
            .fold(0.0, f64::max);
        let net = vms.iter().find_map(|vm| vm.net.as_ref());
        let rtt = |q: f64| net.and_then(|n| n.rtt(q));
        let per_op = |total: Option<f64>| {
            let ops = net.map(|n| n.ops()).filter(|ops| *ops > 0.0)?;
            Some(total? / ops)
        };
        let guest_irqs = sum_opt(
            vms.iter()
                .flat_map(|vm| &vm.results)
                .filter(|r| r.get("workload").is_some_and(|w| w == "net"))
                .filter_map(|r| num(r, "irqs")),
        );
        RunMetrics {
            scenario: scenario.into(),
            variant: variant.label(),
            rep,
            net: net.is_some(),
            rr_per_s: net.and_then(|n| n.rr_per_s()),
            rtt_p10_us: rtt(0.10),
            rtt_p25_us: rtt(0.25),
            rtt_p50_us: rtt(0.50),
            rtt_p75_us: rtt(0.75),
            rtt_p90_us: rtt(0.90),
            rtt_p99_us: rtt(0.99),
            rtt_p999_us: rtt(0.999),
            rr_lost: net.filter(|n| n.round_trips > 0).map(|n| n.lost as f64),
            to_guest_mbit_s: net.and_then(|n| n.mbit_s_to_guest()),
            from_guest_mbit_s: net.and_then(|n| n.mbit_s_from_guest()),
            net_up_ms: net.map(|n| n.up_ms),
            exits_per_op: per_op(per_vcpu("exits")),
            guest_irqs_per_op: per_op(guest_irqs),
            vmm_on_compute_cpu_s: vmm_on_compute_cpu(vms),
            background_cores: vms.iter().find_map(|vm| vm.background_cores),
            solo_background_cores: solo.and_then(|s| s.background_cores),
            host_cpu_ms: net.map(|n| n.host_cpu_ms),
            host_wait_ms: net.map(|n| n.host_wait_ms),
            compute_pct: compute_rate(vms)
                .zip(solo)
                .map(|(r, solo)| 100.0 * r / solo.rate),
            io_vcpu_pct: sum_opt(
                blk()
                    .filter(|r| r.get("wait").is_some_and(|w| w == "poll"))
                    .filter_map(|r| num(r, "poll_iters_per_ms")),
            )
            .zip(solo)
            .map(|(r, solo)| 100.0 * r / solo.rate_per_cpu),
            iops: sum_opt(blk().filter_map(|r| num(r, "iops"))),
            lat_p10_us: max_of(blk().filter_map(|r| num(r, "lat_us_p10"))),
            lat_p25_us: max_of(blk().filter_map(|r| num(r, "lat_us_p25"))),
            lat_p50_us: max_of(blk().filter_map(|r| num(r, "lat_us_p50"))),
            lat_p75_us: max_of(blk().filter_map(|r| num(r, "lat_us_p75"))),
            lat_p90_us: max_of(blk().filter_map(|r| num(r, "lat_us_p90"))),
            lat_p99_us: max_of(blk().filter_map(|r| num(r, "lat_us_p99"))),
            lat_p999_us: max_of(blk().filter_map(|r| num(r, "lat_us_p999"))),
            scrub_mib_s: scrub_bytes
                .filter(|_| ms > 0.0)
                .map(|b| b / (1 << 20) as f64 / (ms / 1000.0)),
            cpu_vcpu_s: cpu(ThreadClass::Vcpu),
            cpu_device_s: cpu(ThreadClass::Device),
            cpu_other_s: cpu(ThreadClass::Other),
            wait_vcpu_s: wait(ThreadClass::Vcpu),
            wait_device_s: wait(ThreadClass::Device),
            wait_other_s: wait(ThreadClass::Other),
            peak_threads: io_vm.map_or(0.0, |vm| vm.cpu.peak_threads_running as f64),
            io_vm_vcpus: io_vm.map_or(0.0, |vm| {
                vm.report
                    .as_ref()
                    .and_then(|r| r["vcpus"].as_array().map(|a| a.len() as f64))
                    .unwrap_or(0.0)
            }),
            ctx_switches: vms.iter().map(|vm| vm.cpu.context_switches as f64).sum(),
            kicks_sent: kicks("kicks_sent"),
            kicks_useful: kicks("kicks_useful"),
            pickup_p50_us: pickup("p50_ns"),
            pickup_p99_us: pickup("p99_ns"),
            pickup_p999_us: pickup("p999_ns"),
            wait_p50_us: latency("wait", "p50_ns"),
            wait_p99_us: latency("wait", "p99_ns"),
            signal_kicks: per_vcpu("signal_kicks"),
            plain_wakes: per_vcpu("plain_wakes"),
            pv_eois: per_vcpu("pv_eois"),
            halt_polls_ok: per_vcpu("halt_polls_ok"),
            ran_executor: report_sum(vms, |v| work(v, "executor")),
            ran_worker: report_sum(vms, |v| work(v, "worker")),
            ran_inline: report_sum(vms, |v| work(v, "inline")),
        }
    }
}

/// Median with min and max.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Every metric of one (scenario, variant) over its repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub variant: String,
    /// A network scenario.
    pub net: bool,
    pub metrics: BTreeMap<&'static str, Spread>,
}

/// All rows, in run order.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rows: Vec<Row>,
}

type Getter = fn(&RunMetrics) -> Option<f64>;

/// The summarized metrics: (name, getter).
const METRICS: &[(&str, Getter)] = &[
    ("compute_pct", |m| m.compute_pct),
    ("io_vcpu_pct", |m| m.io_vcpu_pct),
    ("iops", |m| m.iops),
    ("lat_p10_us", |m| m.lat_p10_us),
    ("lat_p25_us", |m| m.lat_p25_us),
    ("lat_p50_us", |m| m.lat_p50_us),
    ("lat_p75_us", |m| m.lat_p75_us),
    ("lat_p90_us", |m| m.lat_p90_us),
    ("lat_p99_us", |m| m.lat_p99_us),
    ("lat_p999_us", |m| m.lat_p999_us),
    ("scrub_mib_s", |m| m.scrub_mib_s),
    ("cpu_vcpu_s", |m| Some(m.cpu_vcpu_s)),
    ("cpu_device_s", |m| Some(m.cpu_device_s)),
    ("cpu_other_s", |m| Some(m.cpu_other_s)),
    ("wait_vcpu_s", |m| Some(m.wait_vcpu_s)),
    ("wait_device_s", |m| Some(m.wait_device_s)),
    ("wait_other_s", |m| Some(m.wait_other_s)),
    ("peak_threads", |m| Some(m.peak_threads)),
    ("io_vm_vcpus", |m| Some(m.io_vm_vcpus)),
    ("ctx_switches", |m| Some(m.ctx_switches)),
    ("kicks_sent", |m| m.kicks_sent),
    ("kicks_useful", |m| m.kicks_useful),
    ("pickup_p50_us", |m| m.pickup_p50_us),
    ("pickup_p99_us", |m| m.pickup_p99_us),
    ("pickup_p999_us", |m| m.pickup_p999_us),
    ("wait_p50_us", |m| m.wait_p50_us),
    ("wait_p99_us", |m| m.wait_p99_us),
    ("signal_kicks", |m| m.signal_kicks),
    ("plain_wakes", |m| m.plain_wakes),
    ("pv_eois", |m| m.pv_eois),
    ("halt_polls_ok", |m| m.halt_polls_ok),
    ("ran_executor", |m| m.ran_executor),
    ("ran_worker", |m| m.ran_worker),
    ("ran_inline", |m| m.ran_inline),
    ("rr_per_s", |m| m.rr_per_s),
    ("rtt_p10_us", |m| m.rtt_p10_us),
    ("rtt_p25_us", |m| m.rtt_p25_us),
    ("rtt_p50_us", |m| m.rtt_p50_us),
    ("rtt_p75_us", |m| m.rtt_p75_us),
    ("rtt_p90_us", |m| m.rtt_p90_us),
    ("rtt_p99_us", |m| m.rtt_p99_us),
    ("rtt_p999_us", |m| m.rtt_p999_us),
    ("rr_lost", |m| m.rr_lost),
    ("to_guest_mbit_s", |m| m.to_guest_mbit_s),
    ("from_guest_mbit_s", |m| m.from_guest_mbit_s),
    ("net_up_ms", |m| m.net_up_ms),
    ("exits_per_op", |m| m.exits_per_op),
    ("guest_irqs_per_op", |m| m.guest_irqs_per_op),
    ("vmm_on_compute_cpu_s", |m| m.vmm_on_compute_cpu_s),
    ("background_cores", |m| m.background_cores),
    ("solo_background_cores", |m| m.solo_background_cores),
    ("host_cpu_ms", |m| m.host_cpu_ms),
    ("host_wait_ms", |m| m.host_wait_ms),
];

impl Summary {
    /// Groups runs by (scenario, variant), keeping first-seen order.
    pub fn of(runs: &[RunMetrics]) -> Summary {
        let mut keys: Vec<(String, String)> = Vec::new();
        for r in runs {
            let k = (r.scenario.clone(), r.variant.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let rows = keys
            .into_iter()
            .map(|(scenario, variant)| {
                let group: Vec<&RunMetrics> = runs
                    .iter()
                    .filter(|r| r.scenario == scenario && r.variant == variant)
                    .collect();
                let metrics = METRICS
                    .iter()
                    .filter_map(|(name, get)| {
                        Some((
                            *name,
                            Spread::of(group.iter().filter_map(|r| get(r)).collect())?,
                        ))
                    })
                    .collect();
                Row {
                    net: group.iter().any(|r| r.net),
                    scenario,
                    variant,
                    metrics,
                }
            })
            .collect();
        Summary { rows }
    }
}

fn cell(row: &Row, metric: &str, decimals: usize) -> String {
    match row.metrics.get(metric) {
        Some(s) if s.min == s.max => format!("{:.*}", decimals, s.median),
        Some(s) => format!(
            "{:.*} [{:.*}-{:.*}]",
            decimals, s.median, decimals, s.min, decimals, s.max
        ),
        None => "-".into(),
    }
}

/// Prints the results tables (medians [min-max]): block and other scenarios, then the
/// network scenarios, each with its own columns.
pub fn print_table(summary: &Summary) {
    let (net, other): (Vec<&Row>, Vec<&Row>) = summary.rows.iter().partition(|r| r.net);
    if !other.is_empty() {
        print_rows(&other, BLOCK_COLUMNS);
    }
    if !net.is_empty() {
        if !other.is_empty() {
            println!();
        }
        print_rows(&net, NET_COLUMNS);
    }
}

/// A table column: header, metric, decimals.
type Column = (&'static str, &'static str, usize);

const BLOCK_COLUMNS: &[Column] = &[
    ("compute %solo", "compute_pct", 1),
    ("I/O vCPU %solo", "io_vcpu_pct", 1),
    ("IOPS", "iops", 0),
    ("p50 us", "lat_p50_us", 0),
    ("p99 us", "lat_p99_us", 0),
    ("p99.9 us", "lat_p999_us", 0),
    ("scrub MiB/s", "scrub_mib_s", 1),
    ("CPU s vcpu", "cpu_vcpu_s", 2),
    ("CPU s dev", "cpu_device_s", 2),
    ("CPU s other", "cpu_other_s", 2),
    ("thr@once", "peak_threads", 0),
    ("ctxsw", "ctx_switches", 0),
    ("kicks sent", "kicks_sent", 0),
    ("kicks useful", "kicks_useful", 0),
    ("pickup p50 us", "pickup_p50_us", 1),
    ("pickup p99 us", "pickup_p99_us", 1),
    ("wait p50 us", "wait_p50_us", 1),
    ("wait p99 us", "wait_p99_us", 1),
    ("signals", "signal_kicks", 0),
    ("wakes", "plain_wakes", 0),
    ("PV EOIs", "pv_eois", 0),
    ("polled wakes", "halt_polls_ok", 0),
    ("ran exec", "ran_executor", 0),
    ("ran worker", "ran_worker", 0),
    ("ran inline", "ran_inline", 0),
];

const NET_COLUMNS: &[Column] = &[
    ("compute %solo", "compute_pct", 1),
    ("VMM s from compute vCPU", "vmm_on_compute_cpu_s", 3),
    ("bg cores", "background_cores", 2),
    ("solo bg cores", "solo_background_cores", 2),
    ("RR/s", "rr_per_s", 0),
    ("RTT p50 us", "rtt_p50_us", 0),
    ("RTT p99 us", "rtt_p99_us", 0),
    ("RTT p99.9 us", "rtt_p999_us", 0),
    ("lost", "rr_lost", 0),
    ("to guest Mbit/s", "to_guest_mbit_s", 0),
    ("from guest Mbit/s", "from_guest_mbit_s", 0),
    ("CPU s vcpu", "cpu_vcpu_s", 2),
    ("CPU s dev", "cpu_device_s", 2),
    ("CPU s other", "cpu_other_s", 2),
    ("wait s vcpu", "wait_vcpu_s", 2),
    ("wait s dev", "wait_device_s", 2),
    ("wait s other", "wait_other_s", 2),
    ("host wait ms", "host_wait_ms", 0),
    ("ctxsw", "ctx_switches", 0),
    ("exits/op", "exits_per_op", 1),
    ("guest irqs/op", "guest_irqs_per_op", 2),
    ("kicks sent", "kicks_sent", 0),
    ("pickup p50 us", "pickup_p50_us", 1),
    ("pickup p99 us", "pickup_p99_us", 1),
    ("signals", "signal_kicks", 0),
    ("wakes", "plain_wakes", 0),
    ("PV EOIs", "pv_eois", 0),
    ("polled wakes", "halt_polls_ok", 0),
    ("ran exec", "ran_executor", 0),
    ("ran worker", "ran_worker", 0),
    ("ran inline", "ran_inline", 0),
    ("net up ms", "net_up_ms", 0),
];

fn print_rows(rows: &[&Row], columns: &[Column]) {
    let header: Vec<String> = ["scenario", "variant"]
        .into_iter()
        .chain(columns.iter().map(|c| c.0))
        .map(String::from)
        .collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            [r.scenario.clone(), r.variant.clone()]
                .into_iter()
                .chain(columns.iter().map(|(_, m, d)| cell(r, m, *d)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(&header));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for r in &rows {
        println!("{}", line(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::threads::ProcessCpu;

    fn vm(results: &[&str], on_cpu: &[(usize, &str, f64)], idle_busy_ns: u64) -> VmOutcome {
        let mut cpu = ProcessCpu::default();
        for (c, name, s) in on_cpu {
            cpu.on_cpu_s
                .entry(*c)
                .or_default()
                .insert(name.to_string(), *s);
        }
        VmOutcome {
            role: "vm",
            results: results
                .iter()
                .map(|l| crate::bench::parse::records(l, "result ").remove(0))
                .collect(),
            report: Some(serde_json::json!({
                "vcpus": [{"vcpu": 0, "idle_busy_ns": idle_busy_ns}, {"vcpu": 1, "idle_busy_ns": 7}]
            })),
            cpu,
            net: None,
            background_cores: None,
        }
    }

    #[test]
    fn what_the_vmm_took_from_the_computing_vcpu_is_its_cpu_and_its_own_work() {
        let v = vm(
            &[
                "result cpu=0 workload=compute ms=1 iters_per_ms=5",
                "result cpu=1 workload=net ms=1",
            ],
            &[
                (1, "vcpu0", 1.0),
                (1, "ns-work0", 0.25),
                (1, "ns-notify", 0.125),
                (0, "vcpu1", 0.5),
                (0, "ns-work1", 2.0),
            ],
            500_000_000,
        );
        // vCPU0 ran on CPU 1: the workers and notifier there, plus its own 0.5 s of work.
        assert_eq!(vmm_on_compute_cpu(&[v]), Some(0.875));
        let none = vm(&["result cpu=1 workload=net ms=1"], &[], 0);
        assert_eq!(vmm_on_compute_cpu(&[none]), None);
    }
}
