//! VM tier (root, a kernel that allows `bpf_probe_write_user`): placeholders
//! only ever go back to the TLS call that recorded them.
//!
//! The test binary exports its own `SSL_write`, which kloak hooks as it would
//! OpenSSL's. A thread is rewritten in place and dies inside the call, so its
//! return probe never runs and its restore list stays behind. Its memory is
//! then reused, and a new thread with the same id (the kernel's
//! `ns_last_pid`) makes a write with no placeholder: before the fix, that
//! call's return wrote the dead thread's placeholder over the reused memory.
//! Run with `cargo test --test stale_restore -- --ignored` as root.

use std::ffi::c_void;
use std::fs;
use std::os::raw::c_int;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use kloak::dataplane::maps::{diff, DesiredState, Records, SecretState};
use kloak::dataplane::skel::types::kloak_counter;
use kloak::dataplane::targets::{file_id, inspect, TlsTarget};
use kloak::dataplane::{DataPlane, LoaderConfig, ObserveReason, RewriteStrategy};
use kloak::placeholder::{generate, SecretValue};
use kloak::policy::Policy;

const SECRET: &[u8] = b"sk-stale-restore-0123456789abcdef";

/// The calling thread exits inside the call, as a killed thread would.
static DIE_INSIDE: AtomicBool = AtomicBool::new(false);

/// # Safety
/// Never dereferences its arguments: it only stands where OpenSSL's would.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn SSL_write(ssl: *mut c_void, buf: *const c_void, num: c_int) -> c_int {
    std::hint::black_box((ssl, buf));
    if DIE_INSIDE.load(Ordering::SeqCst) {
        // SAFETY: ends this thread only; nothing it owns is touched again.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    }
    num
}

fn gettid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

struct TestCgroup {
    path: std::path::PathBuf,
    parent_procs: std::path::PathBuf,
}

impl TestCgroup {
    fn enter(&self) {
        fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("enter the protected cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(&self.parent_procs, std::process::id().to_string());
        let _ = fs::remove_dir(&self.path);
    }
}

#[test]
#[ignore = "needs root and a kernel that allows bpf_probe_write_user"]
fn a_dead_threads_restore_list_never_reaches_a_new_thread_with_its_id() {
    let features = kloak::dataplane::probes::probe(true);
    assert!(
        features.write_user,
        "this test needs bpf_probe_write_user (run it in the VM tier)"
    );
    let exe = std::env::current_exe().expect("test binary");
    let target = inspect(&exe)
        .expect("inspect the test binary")
        .expect("its SSL_write is a TLS target");
    assert!(matches!(target, TlsTarget::OpenSsl(_)));

    let root = kloak::dataplane::probes::cgroup2_mount().expect("cgroup v2 mounted");
    let path = root.join(format!("kloak-test-stale-{}", std::process::id()));
    fs::create_dir_all(&path).expect("cgroup");
    let cgroup = TestCgroup {
        parent_procs: root.join("cgroup.procs"),
        path,
    };
    let cgroup_id = fs::metadata(&cgroup.path).expect("cgroup").ino();
    let value = SecretValue::new(SECRET.to_vec());
    let placeholder = generate(&value, &mut rand::rngs::OsRng).expect("placeholder");
    let mut state = DesiredState::default();
    state.cgroups.insert(cgroup_id);
    state.secrets.insert(
        1,
        SecretState {
            placeholder: placeholder.clone(),
            value,
            // Any host: the rewrite needs no connection, only the binding.
            policy: Policy {
                hosts: Vec::new(),
                port: None,
            },
        },
    );
    state.bindings.insert((cgroup_id, 1));
    let records = state.records().expect("records");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (dataplane, _events) = DataPlane::start(LoaderConfig {
        pin_dir: format!("/sys/fs/bpf/kloak/test-stale-{}", std::process::id()).into(),
        persist: false,
        rewrite: true,
        observe_reason: ObserveReason::Requested,
        hold_new_executables: false,
        strategy: RewriteStrategy::InPlace,
        observe: false,
        tc_handle: 0x6b7f_0000,
    })
    .expect("data plane");
    rt.block_on(dataplane.apply(diff(&Records::new(), &records)))
        .expect("maps");
    let id = file_id(&exe).expect("stat");
    rt.block_on(dataplane.hook_file(&exe, id, Some(target)))
        .expect("hook the test binary's SSL_write");
    cgroup.enter();

    // A thread is rewritten in place and dies inside SSL_write.
    let mut reused = placeholder.as_str().as_bytes().to_vec();
    let buf = reused.as_mut_ptr() as usize;
    let len = reused.len() as c_int;
    let (tid_tx, tid_rx) = mpsc::channel();
    DIE_INSIDE.store(true, Ordering::SeqCst);
    // Never joined: the thread ends inside the call, without unwinding.
    let _dying = std::thread::spawn(move || {
        let _ = tid_tx.send(gettid());
        // SAFETY: the stand-in reads nothing.
        unsafe { SSL_write(std::ptr::null_mut(), buf as *const c_void, len) };
    });
    let dead_tid = tid_rx.recv().expect("the thread's id");
    let task = format!("/proc/self/task/{dead_tid}");
    while Path::new(&task).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    DIE_INSIDE.store(false, Ordering::SeqCst);
    assert_eq!(
        reused.as_slice(),
        SECRET,
        "the dying thread's write was rewritten in place (else this test proves nothing)"
    );
    // The program reuses that memory.
    reused.fill(b'x');

    // A new thread gets the dead thread's id and writes without a placeholder.
    let mut new_tid = 0;
    for _ in 0..20 {
        fs::write("/proc/sys/kernel/ns_last_pid", (dead_tid - 1).to_string()).expect("ns_last_pid");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let tid = gettid();
            if tid == dead_tid {
                let plain = b"GET / HTTP/1.1\r\n\r\n";
                // SAFETY: the stand-in reads nothing.
                unsafe {
                    SSL_write(
                        std::ptr::null_mut(),
                        plain.as_ptr() as *const c_void,
                        plain.len() as c_int,
                    )
                };
            }
            let _ = tx.send(tid);
        })
        .join()
        .expect("writer thread");
        new_tid = rx.recv().expect("tid");
        if new_tid == dead_tid {
            break;
        }
    }
    assert_eq!(new_tid, dead_tid, "could not reuse the dead thread's id");
    let counters = rt.block_on(dataplane.counters()).expect("counters");
    drop(cgroup);
    dataplane.shutdown();
    assert!(
        reused.iter().all(|&b| b == b'x'),
        "memory the program reused was overwritten with placeholder bytes"
    );
    assert_eq!(
        counters[kloak_counter::KLOAK_CTR_RESTORE_STALE.0 as usize],
        1,
        "the stale list was dropped, and counted"
    );
}
