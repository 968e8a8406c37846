//! The eBPF data plane: skeleton, loader thread, map records, events, kernel
//! probes, and the GCM model the ciphertext strategy is checked against.

pub mod config;
pub mod dispatch;
pub mod events;
pub mod gcm;
pub mod held;
pub mod hooking;
pub mod inspection_cache;
pub mod links;
pub mod loader;
pub mod maps;
pub mod plan;
pub mod probes;
pub mod retire;
pub mod skel;
pub mod slots;
pub mod targets;
pub mod wake;
pub mod wire;

pub use dispatch::EventReceiver;
pub use events::{Event, EventKind, Reason, Strategy};
pub use loader::{DataPlane, LoaderConfig, ObserveReason, RewriteStrategy};
pub use wire::WireSide;
