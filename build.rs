//! Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton in OUT_DIR.

use std::env;
use std::ffi::OsStr;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const CLANG_ARGS: &[&str] = &[
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Werror",
    "-Ibpf/include",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    let sources = std::fs::read_dir("bpf").expect("bpf/ exists");
    let mut built = 0;
    for entry in sources {
        let path = entry.expect("readable bpf/ entry").path();
        let Some(name) = path.file_name().and_then(OsStr::to_str) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        SkeletonBuilder::new()
            .source(&path)
            .clang_args(CLANG_ARGS)
            .build_and_generate(out_dir.join(format!("{stem}.skel.rs")))
            .unwrap_or_else(|err| panic!("building {}: {err:#}", path.display()));
        built += 1;
    }
    assert!(built > 0, "no bpf/*.bpf.c sources found");
}
