//! The `net` workload: a virtio-net device driven by `virtio-drivers`, smoltcp on top,
//! the services of `net_services`, all at CPL3, until enough TCP sessions are through, a
//! `quit` datagram arrives or `net_ms` passes. See docs/guest-abi.md, "Network".
//!
//! Waiting (`net_wait=irq`, the default) is interrupt driven: after each
//! `Interface::poll` the CPU halts until the device's interrupt or smoltcp's next timer
//! (ACK delay, retransmission), whichever is first; the interrupt is acknowledged
//! (InterruptStatus read and written back) before the rings are looked at again, so a
//! completion that races the acknowledgement is not lost. `net_wait=poll` asks the device
//! for no interrupts and polls the rings without halting. Time is the TSC (`time`).

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet, SocketStorage};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use testguest::cmdline::{Config, VirtioMmioDevice, Workload};
use testguest::drivers_config::{NetConfig, NetMode, NetWait};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::Transport;

use crate::dma::Owned;
use crate::idt::IrqSlot;
use crate::net_phy::{Driver, Phy};
use crate::net_services::Services;
use crate::vdevices::{self, Assignment, Resetting};
use crate::{apic, println, stack, time, wait, warn, x86};

/// Longest single halt: the loop re-checks its deadlines at least this often.
const MAX_WAIT_US: u64 = 100_000;
/// After the end condition, how long the workload keeps serving to get its last answers
/// (sink reply, FINs, `bye`) out.
const LINGER_US: u64 = 2_000_000;
/// Used when the device offers no usable MAC (multicast): a locally administered one.
const FALLBACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Why the workload ended: the `end=` value.
#[derive(Clone, Copy)]
enum End {
    Sessions,
    Quit,
    Timeout,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Sessions => "sessions",
            End::Quit => "quit",
            End::Timeout => "timeout",
        }
    }
}

/// Runs the `net` workload on CPU `cpu`.
pub fn run(cpu: usize, config: &Config) {
    let net = &config.drivers.net;
    let (nth, result) = match vdevices::assignment(cpu, Workload::Net) {
        Some(Ok(a)) if net.mode == NetMode::Hostile => (a.nth, crate::net_hostile::run(cpu, &a)),
        Some(Ok(a)) => (a.nth, start(cpu, net, &a)),
        Some(Err((nth, e))) => (nth, Err(e)),
        None => (net.dev, Err("not-set-up")),
    };
    if let Err(e) = result {
        println!("result cpu={cpu} workload=net dev={nth} error={e}");
    }
}

/// Checks the configuration and the queue sizes, then serves with the largest queue the
/// device allows (256 or 32 entries).
fn start(cpu: usize, net: &NetConfig, a: &Assignment) -> Result<(), &'static str> {
    if net.ip.is_none() {
        return Err("no-ip");
    }
    if net.peer.is_none() {
        return Err("no-peer");
    }
    let mut transport = a.transport()?;
    let max = transport.max_queue_size(0).min(transport.max_queue_size(1));
    if max >= 256 {
        serve::<64>(cpu, net, a, transport)
    } else if max >= 32 {
        serve::<32>(cpu, net, a, transport)
    } else {
        warn!("net: QueueNumMax is {max}; the driver needs at least 32");
        Err("queue-too-small")
    }
}

fn now(tsc: u64) -> Instant {
    Instant::from_micros(time::tsc_to_us(tsc) as i64)
}

/// The device, its smoltcp interface and the MAC in use.
type BroughtUp<const N: usize> = (Owned<Phy<N>>, Owned<Interface>, [u8; 6]);

/// Brings the driver up under smoltcp. Its own (non-inlined) frame: the driver's queues
/// are built by value, and that stack space must not stay allocated under the serving loop.
#[inline(never)]
fn bring_up<const N: usize>(
    net: &NetConfig,
    dev: VirtioMmioDevice,
    transport: MmioTransport<'static>,
    now_tsc: u64,
) -> Result<BroughtUp<N>, &'static str> {
    let (Some((ip, prefix)), Some(peer)) = (net.ip, net.peer) else {
        return Err("no-ip");
    };
    let driver = Driver::<N>::new(transport).map_err(|e| {
        warn!("net: virtio-drivers: {e}");
        "init-failed"
    })?;
    let driver = Resetting::new(dev, driver);
    let mut phy = Owned::new(Phy::new(driver, peer)?).ok_or("no-dma-memory")?;
    if net.wait == NetWait::Poll {
        phy.disable_interrupts();
    }
    let mut mac = phy.mac();
    if mac[0] & 1 != 0 {
        warn!(
            "net: device MAC {} is multicast; using {}",
            Mac(mac),
            Mac(FALLBACK_MAC)
        );
        mac = FALLBACK_MAC;
    }
    let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = now_tsc;
    let mut iface =
        Owned::new(Interface::new(config, &mut *phy, now(now_tsc))).ok_or("no-dma-memory")?;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
    });
    Ok((phy, iface, mac))
}

fn serve<const N: usize>(
    cpu: usize,
    net: &NetConfig,
    a: &Assignment,
    transport: MmioTransport<'static>,
) -> Result<(), &'static str> {
    let mark = stack::paint();
    let t0 = x86::rdtsc();
    let (mut phy, mut iface, mac) = bring_up::<N>(net, a.dev, transport, t0)?;
    let mut storage: [SocketStorage<'_>; 4] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut services = Services::new(&mut sockets)?;
    if let (Some((ip, prefix)), Some(peer)) = (net.ip, net.peer) {
        println!(
            "net dev={} mac={} ip={ip}/{prefix} peer={peer} base={:#x} irq={} qsize={N} mtu=1500 wait={}",
            a.nth,
            Mac(mac),
            a.dev.base,
            a.dev.irq,
            net.wait.name()
        );
    }
    let mut waiter = Waiter::new(a.slot());
    let wakeups0 = wait::wakeups();
    let mut stack = Stack {
        phy: &mut phy,
        iface: &mut iface,
        sockets: &mut sockets,
        services: &mut services,
    };
    let end = stack.serve(net, &mut waiter, t0);
    let elapsed_us = time::tsc_to_us(x86::rdtsc() - t0).max(1);
    let wakeups = wait::wakeups() - wakeups0;
    let s = services.stats;
    let c = phy.counters;
    println!(
        "result cpu={cpu} workload=net ms={} dev={} end={} sessions={} udp_echoed={} udp_echo_bytes={} udp_dropped={} sink_sessions={} sink_bytes={} source_sessions={} source_bytes={} tcp_aborted={} rx_frames={} rx_bytes={} tx_frames={} tx_bytes={} rx_ignored={} arp_rx={} arp_tx={} icmp_echo_rx={} icmp_echo_tx={} rx_errors={} tx_errors={} irqs={} wakeups={wakeups} wait={} stack_used={}",
        elapsed_us / 1000,
        a.nth,
        end.name(),
        services.sessions(),
        s.udp_echoed,
        s.udp_echo_bytes,
        s.udp_dropped,
        s.sink_sessions,
        s.sink_bytes,
        s.source_sessions,
        s.source_bytes,
        s.tcp_aborted,
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.rx_ignored,
        c.arp_rx,
        c.arp_tx,
        c.icmp_echo_rx,
        c.icmp_echo_tx,
        c.rx_errors,
        c.tx_errors,
        waiter.irqs,
        net.wait.name(),
        mark.used(),
    );
    Ok(())
}

/// Everything the serving loop drives.
struct Stack<'a, 's, const N: usize> {
    phy: &'a mut Phy<N>,
    iface: &'a mut Interface,
    sockets: &'a mut SocketSet<'s>,
    services: &'a mut Services,
}

impl<const N: usize> Stack<'_, '_, N> {
    /// Polls smoltcp and the services, halting in between, until an end condition and
    /// the linger after it.
    fn serve(&mut self, net: &NetConfig, waiter: &mut Waiter, t0: u64) -> End {
        let poll = net.wait == NetWait::Poll;
        let end_at = t0 + time::us_to_tsc(net.ms.saturating_mul(1000));
        let mut ending: Option<(End, u64)> = None;
        let end = loop {
            let tsc = x86::rdtsc();
            let ts = now(tsc);
            self.iface.poll(ts, &mut *self.phy, self.sockets);
            self.phy.repost_consumed();
            self.services.step(self.sockets);
            if ending.is_none() {
                ending = self
                    .end_condition(net, tsc >= end_at)
                    .map(|w| (w, tsc + time::us_to_tsc(LINGER_US)));
            }
            let limit = match ending {
                Some((why, linger))
                    if (self.services.settled(self.sockets) && self.phy.transmits_done())
                        || tsc >= linger =>
                {
                    break why
                }
                Some((_, linger)) => linger,
                None => end_at,
            };
            // The look that decides to halt comes after a full fence: see
            // `net_phy::used_event_fence` (the receive side's pops were in `poll`).
            crate::net_phy::used_event_fence();
            let can_tx = self.phy.can_transmit();
            let delay_us = self
                .iface
                .poll_delay(ts, self.sockets)
                .map(|d| d.total_micros());
            if poll || (can_tx && (self.phy.rx_ready() || delay_us == Some(0))) {
                continue;
            }
            // Nothing to do before the device interrupts (a frame, or a transmit buffer
            // back when all are in flight) or smoltcp's timer is due.
            let wait_us = match delay_us {
                Some(us) if can_tx => us.min(MAX_WAIT_US),
                _ => MAX_WAIT_US,
            };
            if waiter.wait((tsc + time::us_to_tsc(wait_us)).min(limit)) {
                self.phy.ack_interrupt();
            }
        };
        waiter.disarm();
        end
    }

    fn end_condition(&self, net: &NetConfig, timed_out: bool) -> Option<End> {
        if self.services.quit {
            Some(End::Quit)
        } else if net.sessions > 0 && self.services.sessions() >= net.sessions {
            Some(End::Sessions)
        } else if timed_out {
            Some(End::Timeout)
        } else {
            None
        }
    }
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
struct Mac([u8; 6]);

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Halts until the device interrupts or a deadline passes, keeping the LAPIC timer armed
/// across waits (re-armed only when it fired or a wait needs an earlier wake-up, so a wait
/// usually costs no timer programming).
struct Waiter {
    slot: IrqSlot,
    seen_irqs: u64,
    timer_at: Option<u64>,
    seen_timer: u64,
    /// Device interrupts counted.
    irqs: u64,
}

impl Waiter {
    fn new(slot: IrqSlot) -> Self {
        Self {
            slot,
            seen_irqs: wait::irq_count(slot),
            timer_at: None,
            seen_timer: 0,
            irqs: 0,
        }
    }

    /// Whether the device interrupted (else the deadline passed).
    fn wait(&mut self, deadline: u64) -> bool {
        loop {
            let epoch = wait::irq_epoch();
            let irqs = wait::irq_count(self.slot);
            if irqs != self.seen_irqs {
                self.irqs += irqs - self.seen_irqs;
                self.seen_irqs = irqs;
                return true;
            }
            let now = x86::rdtsc();
            if now >= deadline {
                return false;
            }
            self.arm(now, deadline);
            wait::halt_since(epoch);
        }
    }

    fn arm(&mut self, now: u64, deadline: u64) {
        let fired = wait::irq_count(IrqSlot::TIMEOUT) != self.seen_timer;
        match self.timer_at {
            Some(at) if !fired && at <= deadline && at > now => {}
            _ => {
                self.seen_timer = wait::irq_count(IrqSlot::TIMEOUT);
                apic::arm_timer(time::tsc_to_apic(deadline - now));
                self.timer_at = Some(deadline);
            }
        }
    }

    fn disarm(&mut self) {
        if self.timer_at.take().is_some() {
            apic::arm_timer(0);
        }
    }
}
