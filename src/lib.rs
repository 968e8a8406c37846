//! kloak: workloads use secrets without holding them.
//!
//! The binary's subcommands share these modules; pure decision logic lives
//! apart from I/O so it is unit-tested.

pub mod cgroup;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod doctor;
pub mod placeholder;
pub mod policy;
pub mod run;
pub mod telemetry;
