//! The net device on a real tap, inside a network namespace the test makes
//! (so nothing reaches any other network): host 10.99.0.1/24 on the tap,
//! the synthetic guest 10.99.0.2 behind the device. Needs root, /dev/net/tun
//! and `ip`; without them the test says so and passes, or fails under `CI`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use super::tap::VNET_HDR_LEN;
use super::tests::{Rig, MAC};
use super::Tap;
use crate::virtio::chain::tests::W;
use crate::virtio::VirtioDevice;

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0x99, 0, 1];
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const GUEST_PORT: u16 = 7777;
const TAP: &str = "ns-tap0";

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    /// A new namespace, or why there cannot be one here.
    fn create() -> Result<Netns, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun".into());
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nightshift-net-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Netns(name))
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.0)).unwrap();
        move_into_link_name_space(f.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();
    }

    /// Runs `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from the guest to the host's `port`.
fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GUEST_IP.octets());
    ip.extend_from_slice(&HOST_IP.octets());
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&GUEST_PORT.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

/// The UDP payload of `frame` if it is a datagram to the guest's port.
fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.get(9)? != &17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let udp = ip.get(ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (u16::from_be_bytes([udp[2], udp[3]]) == GUEST_PORT).then(|| udp.get(8..len))?
}

#[test]
fn udp_both_ways_and_a_flood_without_buffers_through_a_tap_in_a_netns() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) if std::env::var_os("CI").is_some() => panic!("cannot run the tap test: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: tap test needs a network namespace: {why}");
            return;
        }
    };
    // The tap and the host's socket are made on a thread inside the namespace.
    std::thread::scope(|s| s.spawn(|| run_in(&ns)).join().unwrap());
}

fn run_in(ns: &Netns) {
    ns.enter();
    let tap = Tap::open(TAP).expect("opening a tap in the namespace");
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    let mut rig = Rig::new(tap, idlework::Policy::Workers);
    ns.ip(&["link", "set", TAP, "address", &mac_str(HOST_MAC)]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    let guest_mac = mac_str(MAC);
    ns.ip(&[
        "neigh",
        "replace",
        "10.99.0.2",
        "lladdr",
        &guest_mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    let sock = UdpSocket::bind(SocketAddrV4::new(HOST_IP, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();

    // Guest → host: 1 byte and a full MTU's worth (1472 = 1500 - IP - UDP).
    for (i, len) in [1usize, 1472].into_iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        rig.send(
            &udp_frame(port, &payload),
            0x40_0000 + i as u64 * 0x1_0000,
            30,
        );
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).expect("the guest's datagram");
        assert_eq!(&buf[..n], &payload[..]);
        assert_eq!(from, SocketAddrV4::new(GUEST_IP, GUEST_PORT).into());
    }
    assert_eq!(rig.wait_tx(2).len(), 2);

    // Host → guest, 1 byte to the MTU; other frames (none expected) are skipped.
    let to = SocketAddrV4::new(GUEST_IP, GUEST_PORT);
    for len in [1usize, 100, 1472] {
        let payload: Vec<u8> = (0..len).map(|b| (b * 13 + len) as u8).collect();
        sock.send_to(&payload, to).unwrap();
        loop {
            let heads = rig.post_rx(1, 0x10_0000, 1526);
            let used = rig.wait_rx(1);
            assert_eq!(used[0].0, heads[0]);
            let frame = rig.rx.read(
                0x10_0000 + VNET_HDR_LEN as u64,
                used[0].1 as usize - VNET_HDR_LEN,
            );
            if let Some(p) = udp_payload(&frame) {
                assert_eq!(p, &payload[..]);
                break;
            }
        }
    }

    // A flood while the guest posts no buffers: nothing is read (the tap's
    // kernel queue holds or drops it), then the guest takes what it posts.
    let before = rig.count("rx_frames");
    let payload = [0x5a; 1000];
    // Queued frames hold the socket's send buffer: a blocking send would wait for ever.
    sock.set_nonblocking(true).unwrap();
    for _ in 0..5000 {
        let _ = sock.send_to(&payload, to); // the kernel may refuse (EAGAIN, ENOBUFS): fine
    }
    assert_eq!(rig.count("rx_frames"), before, "read without guest buffers");
    let bufs: Vec<u16> = (0..64)
        .map(|i| rig.rx.offer(&[(0x20_0000 + i * 2048, 1526)], W))
        .collect();
    rig.net.queue_notify(super::device::RX_QUEUE);
    let used = rig.wait_rx(64);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), bufs);
    assert_eq!(rig.count("rx_frames"), before + 64);
    assert_eq!(rig.count("rx_dropped_too_small"), 0);
}
