//! virtio-rng (entropy device, virtio 1.x 5.4): the guest posts writable
//! buffers, the device fills them from the host's getrandom.

pub mod device;

pub use device::{Rng, RngCounters};
