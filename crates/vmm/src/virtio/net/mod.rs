//! virtio-net on a tap: one RX and one TX queue (with EVENT_IDX notification
//! suppression when the driver accepts it), frames behind a 12-byte
//! `virtio_net_hdr_v1`, no offloads (no checksum, TSO or mergeable buffers
//! are offered; the tap is set to none), a MAC and a link-up status.
//!
//! Work runs where the engine's policy puts it: RX (tap → guest buffers) and
//! TX (guest frames → tap) each run in their queue's ordered lane
//! ([`crate::virtio::queue_lane`]), one batch at a time, so TX frames leave
//! in ring order; chains go back through the same in-flight accounting as
//! block's ([`crate::virtio::in_flight`]). The tap fd is a host event source
//! on the notifier thread: readable → the RX lane is kicked. While the guest posts no RX buffers the tap is not read (and not
//! watched); the guest's RX notify resumes it. Every frame that is not
//! delivered is counted ([`NetCounters`]).

pub mod device;
mod rx;
pub mod tap;
mod tx;

pub use device::{default_mac, Net, NetCounters, NetError, MAX_FRAME};
pub use tap::{Tap, TapError};

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod tests;
