//! What the loader thread waits on: its ring buffer, or a command.
//!
//! Commands arrive on a channel the thread cannot poll, so each sender also
//! signals an eventfd; the thread waits on one epoll set holding that eventfd
//! and the ring buffer's own epoll fd. A command is served at once, not at the
//! next ring poll.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Why [`Waiter::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A command was sent (the signal is consumed).
    Command,
    /// The ring buffer has records.
    Ring,
    /// Neither, within the timeout.
    Timeout,
}

/// Signals the loader thread; cheap to clone into every sender.
#[derive(Clone)]
pub struct Wakeup(Arc<EventFd>);

/// The loader thread's end.
pub struct Waiter {
    epoll: Epoll,
    wakeup: Arc<EventFd>,
}

const COMMAND: u64 = 1;
const RING: u64 = 2;

impl Wakeup {
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Self(Arc::new(fd)))
    }

    pub fn wake(&self) {
        // A full counter (never in practice) still leaves the fd readable: the wake is not lost.
        let _ = self.0.write(1);
    }

    /// The waiting end, over `ring` (the ring buffer's epoll fd).
    pub fn waiter(&self, ring: BorrowedFd<'_>) -> io::Result<Waiter> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            self.0.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, COMMAND),
        )?;
        epoll.add(ring, EpollEvent::new(EpollFlags::EPOLLIN, RING))?;
        Ok(Waiter {
            epoll,
            wakeup: self.0.clone(),
        })
    }
}

impl Waiter {
    /// Waits until a command is sent, the ring has records, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> io::Result<Woken> {
        let mut ready = [EpollEvent::empty(); 2];
        let timeout = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
        let count = match self.epoll.wait(&mut ready, timeout) {
            Ok(count) => count,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(err) => return Err(err.into()),
        };
        let woken: Vec<u64> = ready[..count].iter().map(EpollEvent::data).collect();
        if woken.contains(&COMMAND) {
            // Non-blocking: EAGAIN when another wait already consumed it.
            let _ = self.wakeup.read();
            return Ok(Woken::Command);
        }
        Ok(if woken.contains(&RING) {
            Woken::Ring
        } else {
            Woken::Timeout
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    /// A pipe nobody writes to (both ends kept open: a closed writer reads as EOF).
    fn quiet_pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    /*
     * Before this, a command waited for the next 50 ms ring poll; a loop
     * waiting "forever" on the ring alone would never have seen it.
     */
    #[test]
    fn a_command_wakes_the_waiter_before_its_timeout() {
        let (ring, _writer) = quiet_pipe();
        let wakeup = Wakeup::new().expect("eventfd");
        let waiter = wakeup.waiter(ring.as_fd()).expect("epoll");
        let sender = wakeup.clone();
        let thread = std::thread::spawn(move || sender.wake());
        assert_eq!(
            waiter.wait(Duration::from_secs(600)).expect("wait"),
            Woken::Command
        );
        thread.join().expect("sender");
        // The signal was consumed: nothing pending now.
        assert_eq!(
            waiter.wait(Duration::from_millis(1)).expect("wait"),
            Woken::Timeout
        );
    }

    #[test]
    fn a_readable_ring_wakes_the_waiter() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&write, b"x").expect("write");
        let wakeup = Wakeup::new().expect("eventfd");
        let waiter = wakeup.waiter(read.as_fd()).expect("epoll");
        assert_eq!(
            waiter.wait(Duration::from_secs(600)).expect("wait"),
            Woken::Ring
        );
    }
}
