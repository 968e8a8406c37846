//! The generated skeletons and the byte views of their boundary types.
//!
//! The only module with `unsafe`: the generated code, and the `Plain`
//! declarations that let the rest of the crate read and write the C structs
//! as bytes without unsafe of its own.

#![allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unsafe_op_in_unsafe_fn
)]

pub mod kloak {
    include!(concat!(env!("OUT_DIR"), "/kloak.skel.rs"));
}

pub mod probes {
    include!(concat!(env!("OUT_DIR"), "/probes.skel.rs"));
}

/// Benchmark only: the empty probes of `examples/kloak-empty-probe.rs`.
pub mod bench {
    include!(concat!(env!("OUT_DIR"), "/bench.skel.rs"));
}

/// Test only: the segment dropper of `examples/kloak-drop-first.rs`.
pub mod dropfirst {
    include!(concat!(env!("OUT_DIR"), "/dropfirst.skel.rs"));
}

pub use kloak::types;

macro_rules! plain {
    ($($ty:ident),* $(,)?) => {
        // SAFETY: these are `repr(C)` structs generated from BTF, made only of
        // integers and arrays of integers, so every byte pattern is valid.
        $(unsafe impl plain::Plain for types::$ty {})*
    };
}

plain!(
    kloak_event,
    kloak_secret_key,
    kloak_secret,
    kloak_binding_key,
    kloak_addr,
    kloak_verified_key,
    kloak_verified,
    kloak_name_key,
    kloak_name,
    kloak_resolver_key,
    kloak_target,
    kloak_file_key,
    kloak_held,
    kloak_conn_key,
    kloak_gcm_selftest,
    kloak_ct_session,
    kloak_flow_key,
    kloak_ct_flow,
    kloak_retired_key,
);

/// The bytes of a boundary struct, as the kernel sees them.
pub fn bytes_of<T: plain::Plain>(value: &T) -> &[u8] {
    // SAFETY: `Plain` types have no padding-dependent invariants and the
    // slice borrows `value` for its whole size.
    unsafe { plain::as_bytes(value) }
}

/// The bytes of a boundary struct, writable: a program run on it fills it in.
pub fn bytes_of_mut<T: plain::Plain>(value: &mut T) -> &mut [u8] {
    // SAFETY: as for `bytes_of`; every byte pattern is a valid `T`.
    unsafe { plain::as_mut_bytes(value) }
}
