//! kloak: workloads use secrets without holding them.
//!
//! The binary's subcommands share these modules; pure decision logic lives
//! apart from I/O so it is unit-tested.

pub mod certs;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod doctor;
pub mod k8s;
pub mod placeholder;
pub mod policy;
pub mod run;
pub mod secrets;
pub mod telemetry;
pub mod uninstall;
pub mod webhook;
