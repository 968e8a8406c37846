//! How a data plane instance runs: where it pins, which programs it loads,
//! which strategies the kernel may use.

use std::path::PathBuf;

/// How the data plane should run.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Pinned maps and links live here (`/sys/fs/bpf/kloak/<instance>`).
    pub pin_dir: PathBuf,
    /// Keep pins when the process exits, for the next one to adopt.
    pub persist: bool,
    /// Load the programs that rewrite (the kernel must allow user writes).
    pub rewrite: bool,
    /// Why rewriting is off, for the kernel's own record.
    pub observe_reason: ObserveReason,
    /// Stop new executables of protected cgroups at exec until inspected. The
    /// caller must then answer every `EventKind::ExecHeld` by resuming the
    /// process (SIGCONT), or it stays stopped.
    pub hold_new_executables: bool,
    /// Which strategies the kernel may use (`--strategy`).
    pub strategy: RewriteStrategy,
    /// Observe only: nothing is rewritten, by any strategy.
    pub observe: bool,
    /// The `tc` filter handle of this instance: instances must not replace
    /// each other's filters on a shared interface.
    pub tc_handle: u32,
}

/// How placeholders reach the wire, chosen per node (`--strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RewriteStrategy {
    /// Ciphertext for AES-GCM sessions; in place for the rest where the
    /// kernel allows user-memory writes.
    #[default]
    Auto,
    /// Only the plaintext buffer (the real value is in the process's memory
    /// during the TLS call).
    InPlace,
    /// Only the AES-GCM ciphertext on the wire (the real value never enters
    /// the process; works on lockdown kernels).
    Ciphertext,
}

impl RewriteStrategy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::InPlace => "in-place",
            Self::Ciphertext => "ciphertext",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObserveReason {
    Lockdown,
    Requested,
}

impl LoaderConfig {
    /// Rewrites in place when the kernel allows user-memory writes, the
    /// strategy permits it and the user did not ask to observe only; new
    /// executables of protected cgroups are held.
    pub fn for_kernel(
        pin_dir: PathBuf,
        persist: bool,
        write_user: bool,
        observe: bool,
        strategy: RewriteStrategy,
        tc_handle: u32,
    ) -> Self {
        Self {
            pin_dir,
            persist,
            rewrite: write_user && !observe && strategy != RewriteStrategy::Ciphertext,
            observe_reason: if write_user {
                ObserveReason::Requested
            } else {
                ObserveReason::Lockdown
            },
            hold_new_executables: true,
            strategy,
            observe,
            tc_handle,
        }
    }

    /// The ciphertext strategy may run (it needs no user-memory writes).
    pub fn ciphertext(&self) -> bool {
        !self.observe && self.strategy != RewriteStrategy::InPlace
    }
}
