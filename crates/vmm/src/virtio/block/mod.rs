//! virtio-blk: a raw (optionally encrypted) image behind a virtio queue.

pub mod backend;
pub mod request;
