//! The set of executors that announced themselves idle, found in O(1) by
//! the submit path.
//!
//! A vCPU thread that knows its guest is idle (it saw the HLT itself, under
//! a userspace irqchip) *announces* it before it waits; a submitter that
//! queued work *claims* one announced executor and wakes it. Announcements
//! are bits, 64 to a word (a *group*), plus a count of bits set:
//!
//! * the count is the submit path's fast reject: one load when nobody is
//!   idle, whatever the number of executors;
//! * a set bit is a token that exactly one party clears: the claimer
//!   (`fetch_and` saw it set, so the executor is its to wake) or the
//!   executor withdrawing its announcement (it was *not* claimed). Neither
//!   can both lose the token and believe it holds it, so a claim is never
//!   lost nor doubled;
//! * the count is raised before a bit is set and lowered after it is
//!   cleared, so it never reads below the bits set.
//!
//! Finding a set bit scans the groups in use (one word per 64 executors),
//! with no lock and no call into the VMM. Executors past
//! [`MAX_SEATS`] get no seat: they cannot announce and are found only by the
//! timekeeper's probe (see [`IdleHooks::probe_idle`](crate::IdleHooks::probe_idle)).

use crate::sync::{fence, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;

/// Executors per group (bits in a word).
const GROUP: usize = 64;
/// Groups available (4096 executors: KVM's `KVM_MAX_VCPUS` on x86-64).
const GROUPS: usize = 64;
/// Executors that can announce themselves idle.
pub(crate) const MAX_SEATS: usize = GROUP * GROUPS;

/// One executor's place in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seat {
    group: usize,
    mask: u64,
}

struct Group<T> {
    bits: AtomicU64,
    members: [OnceLock<T>; GROUP],
}

/// Announced members of type `T` (the engine's executor slots).
pub(crate) struct Announcements<T> {
    /// Bits set, or about to be set (a fast reject, never an undercount).
    count: AtomicUsize,
    groups: Box<[OnceLock<Box<Group<T>>>]>,
    /// Groups that have members (a bound for the scan; only grows).
    used: std::sync::atomic::AtomicUsize,
}

impl<T> Default for Announcements<T> {
    fn default() -> Self {
        Announcements {
            count: AtomicUsize::new(0),
            groups: (0..GROUPS).map(|_| OnceLock::new()).collect(),
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl<T> Announcements<T> {
    /// Seats member number `index` (registration order), if there is room.
    /// Called once per index, by registration (which is serialised).
    pub(crate) fn seat(&self, index: usize, member: T) -> Option<Seat> {
        if index >= MAX_SEATS {
            return None;
        }
        let (g, bit) = (index / GROUP, index % GROUP);
        let group = self.groups[g].get_or_init(|| {
            Box::new(Group {
                bits: AtomicU64::new(0),
                members: std::array::from_fn(|_| OnceLock::new()),
            })
        });
        // Each index is seated once, so the cell is empty.
        let _ = group.members[bit].set(member);
        self.used
            .fetch_max(g + 1, std::sync::atomic::Ordering::Release);
        Some(Seat {
            group: g,
            mask: 1 << bit,
        })
    }

    fn group(&self, g: usize) -> Option<&Group<T>> {
        self.groups.get(g)?.get().map(|b| &**b)
    }

    /// Announces `seat`, then fences: the caller's next look at the queues
    /// is ordered after it (the other half of the submitter's push, fence,
    /// [`claim`](Self::claim)). Returns false if it was already announced.
    pub(crate) fn announce(&self, seat: Seat) -> bool {
        let Some(group) = self.group(seat.group) else {
            return false;
        };
        self.count.fetch_add(1, SeqCst);
        let fresh = group.bits.fetch_or(seat.mask, SeqCst) & seat.mask == 0;
        if !fresh {
            self.count.fetch_sub(1, SeqCst);
        }
        fence(SeqCst);
        fresh
    }

    /// Withdraws `seat`'s announcement. Returns whether it was still
    /// announced; false means a claimer took it (or it was never made).
    pub(crate) fn withdraw(&self, seat: Seat) -> bool {
        let Some(group) = self.group(seat.group) else {
            return false;
        };
        let held = group.bits.fetch_and(!seat.mask, SeqCst) & seat.mask != 0;
        if held {
            self.count.fetch_sub(1, SeqCst);
        }
        held
    }

    /// Whether anybody may be announced (one load; may be stale).
    pub(crate) fn any(&self) -> bool {
        self.count.load(SeqCst) > 0
    }

    /// Claims announced members one at a time, handing each to `take`,
    /// until `take` accepts one (returns true). Returns whether one was
    /// accepted. A member handed to `take` is no longer announced, whatever
    /// `take` answers. The caller has published its work and fenced.
    pub(crate) fn claim(&self, mut take: impl FnMut(&T) -> bool) -> bool {
        if !self.any() {
            return false;
        }
        let used = self.used.load(std::sync::atomic::Ordering::Acquire);
        for group in (0..used).filter_map(|g| self.group(g)) {
            let mut bits = group.bits.load(SeqCst);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                let mask = 1u64 << bit;
                let prev = group.bits.fetch_and(!mask, SeqCst);
                bits = prev & !mask;
                if prev & mask == 0 {
                    continue; // withdrawn or claimed meanwhile
                }
                self.count.fetch_sub(1, SeqCst);
                if group.members[bit].get().is_some_and(&mut take) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_claim_takes_each_announcement_once() {
        let set = Announcements::default();
        let seats: Vec<_> = (0..70).map(|i| set.seat(i, i).unwrap()).collect();
        assert!(!set.claim(|_| true));
        assert!(set.announce(seats[3]));
        assert!(
            !set.announce(seats[3]),
            "announcing twice is one announcement"
        );
        assert!(set.announce(seats[66]));
        let mut got = Vec::new();
        assert!(set.claim(|&m| {
            got.push(m);
            true
        }));
        assert!(set.claim(|&m| {
            got.push(m);
            true
        }));
        assert!(!set.claim(|_| true));
        got.sort_unstable();
        assert_eq!(got, [3, 66]);
        assert!(!set.any());
        assert!(!set.withdraw(seats[3]), "it was claimed");
    }

    #[test]
    fn a_withdrawn_announcement_cannot_be_claimed() {
        let set = Announcements::default();
        let seat = set.seat(0, ()).unwrap();
        set.announce(seat);
        assert!(set.withdraw(seat));
        assert!(!set.any());
        assert!(!set.claim(|_| true));
    }

    #[test]
    fn a_refused_member_stays_unannounced_and_the_next_is_offered() {
        let set = Announcements::default();
        let (a, b) = (set.seat(0, 'a').unwrap(), set.seat(1, 'b').unwrap());
        set.announce(a);
        set.announce(b);
        let mut offered = Vec::new();
        assert!(set.claim(|&m| {
            offered.push(m);
            m == 'b'
        }));
        assert_eq!(offered, ['a', 'b']);
        assert!(!set.withdraw(a) && !set.withdraw(b));
    }

    #[test]
    fn members_past_the_last_seat_get_none() {
        let set = Announcements::default();
        assert!(set.seat(MAX_SEATS, ()).is_none());
        assert!(set.seat(MAX_SEATS - 1, ()).is_some());
    }
}
