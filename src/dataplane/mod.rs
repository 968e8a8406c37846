//! The eBPF data plane: skeleton, loader thread, map records, events, kernel
//! probes, and the GCM model the ciphertext strategy is checked against.

pub mod events;
pub mod gcm;
pub mod hooking;
pub mod loader;
pub mod maps;
pub mod probes;
pub mod skel;
pub mod targets;

pub use events::{Event, EventKind, Reason, Strategy};
pub use loader::{DataPlane, LoaderConfig, ObserveReason, RewriteStrategy, WireSide};
