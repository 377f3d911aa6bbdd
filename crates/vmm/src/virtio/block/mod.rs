//! virtio-blk: a raw (optionally encrypted) image behind a virtio queue.

pub mod backend;
pub mod device;
pub mod request;
pub mod scrub;
pub mod xts;

pub use backend::{Disk, Transform};
pub use device::{Block, BlockCounters, BlockStats};
pub use scrub::{Scrub, ScrubCounters, ScrubStats};
