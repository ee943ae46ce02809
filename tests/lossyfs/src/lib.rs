//! lossyfs: an in-memory file system for power-loss tests. Every file has
//! durable data and pending data, every folder durable entries and pending
//! ones; `fsync` makes a file's data durable, an `fsync` of a folder its
//! entries; a power cut drops everything else, as Jepsen's LazyFS does.
//!
//! [`tree`] holds the semantics (testable without mounting), [`fuse`]
//! serves them over FUSE; the `lossyfs MOUNTPOINT` binary mounts one and
//! cuts its power at each SIGUSR1.

pub mod fuse;
pub mod tree;

pub use fuse::{mount, LossyFs, Mounted, PowerSwitch};
pub use tree::{Lost, Tree};
