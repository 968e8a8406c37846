//! Kernel events, from the loader thread to the async side.
//!
//! The ring-buffer callback runs on the loader thread, which also serves the
//! async side's commands. It must never wait for the async side: that side may
//! itself be waiting for a command's reply, and then neither moves (held
//! processes stay stopped). So nothing here blocks:
//! - a process held at exec waits for its event, which is never dropped: those
//!   travel on an unbounded queue, whose length is bounded by the processes
//!   the kernel holds (and the `held` map, which the sweep also reads);
//! - decisions travel on a bounded queue and are dropped, counted, when the
//!   consumer falls behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::events::{Event, EventKind};

/// What happened to one event handed to [`EventSender::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The decision queue was full; the event is counted in [`EventSender::dropped`].
    Dropped,
    /// Nobody listens any more.
    Closed,
}

/// The loader thread's end.
#[derive(Clone)]
pub struct EventSender {
    held: mpsc::UnboundedSender<Event>,
    decisions: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// The async side's end: held processes first, then decisions.
pub struct EventReceiver {
    held: mpsc::UnboundedReceiver<Event>,
    decisions: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

/// A pair of ends; `capacity` bounds the decision queue.
pub fn channel(capacity: usize) -> (EventSender, EventReceiver) {
    let (held_tx, held_rx) = mpsc::unbounded_channel();
    let (decisions_tx, decisions_rx) = mpsc::channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        EventSender {
            held: held_tx,
            decisions: decisions_tx,
            dropped: dropped.clone(),
        },
        EventReceiver {
            held: held_rx,
            decisions: decisions_rx,
            dropped,
        },
    )
}

impl EventSender {
    /// Queues one event without ever blocking the calling thread.
    pub fn send(&self, event: Event) -> Delivery {
        if event.kind == EventKind::ExecHeld {
            return match self.held.send(event) {
                Ok(()) => Delivery::Queued,
                Err(_) => Delivery::Closed,
            };
        }
        match self.decisions.try_send(event) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Delivery::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

impl EventReceiver {
    /// The next event; held processes come before any queued decision.
    pub async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            Some(event) = self.held.recv() => Some(event),
            Some(event) = self.decisions.recv() => Some(event),
            else => None,
        }
    }

    /// An event already queued, if any.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.held
            .try_recv()
            .or_else(|_| self.decisions.try_recv())
            .ok()
    }

    /// Decisions dropped because this end fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dataplane::skel::bytes_of;
    use crate::dataplane::skel::types::{kloak_event, kloak_event_kind};

    fn event(kind: EventKind, pid: u32) -> Event {
        let raw_kind = match kind {
            EventKind::ExecHeld => kloak_event_kind::KLOAK_EVENT_EXEC_HELD,
            EventKind::Rewritten => kloak_event_kind::KLOAK_EVENT_TLS_REWRITTEN,
            _ => kloak_event_kind::KLOAK_EVENT_TLS_BLOCKED,
        };
        let raw = kloak_event {
            kind: raw_kind.0,
            pid,
            ..Default::default()
        };
        let event = Event::decode(bytes_of(&raw)).expect("decodable");
        assert_eq!(event.kind, kind);
        event
    }

    /*
     * The deadlock of the review: the decision queue is full and the async
     * side is not reading (it awaits a command the loader thread would serve
     * next). Handing an exec-held event over must still return at once; with
     * a blocking send it never returned.
     */
    #[test]
    fn exec_held_event_never_blocks_on_a_full_queue() {
        let (sender, mut receiver) = channel(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let loader = std::thread::spawn(move || {
            for pid in 0..4 {
                assert_eq!(
                    sender.send(event(EventKind::Blocked, pid)),
                    Delivery::Queued
                );
            }
            let outcome = sender.send(event(EventKind::ExecHeld, 42));
            let _ = done_tx.send(outcome);
        });
        let outcome = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the loader thread blocked handing over an exec-held event");
        assert_eq!(outcome, Delivery::Queued);
        loader.join().expect("loader thread");
        let first = receiver.try_recv().expect("queued");
        assert_eq!(
            (first.kind, first.pid),
            (EventKind::ExecHeld, 42),
            "a held process is served before queued decisions"
        );
    }

    #[test]
    fn decisions_past_capacity_are_dropped_and_counted() {
        let (sender, mut receiver) = channel(2);
        let blocked = event(EventKind::Blocked, 1);
        assert_eq!(sender.send(blocked.clone()), Delivery::Queued);
        assert_eq!(sender.send(blocked.clone()), Delivery::Queued);
        assert_eq!(sender.send(blocked), Delivery::Dropped);
        assert_eq!(receiver.dropped(), 1);
        assert!(receiver.try_recv().is_some());
        assert!(receiver.try_recv().is_some());
        assert!(receiver.try_recv().is_none());
    }

    #[tokio::test]
    async fn recv_ends_when_the_loader_is_gone() {
        let (sender, mut receiver) = channel(2);
        assert_eq!(
            sender.send(event(EventKind::Rewritten, 7)),
            Delivery::Queued
        );
        drop(sender);
        assert_eq!(receiver.recv().await.map(|e| e.pid), Some(7));
        assert!(receiver.recv().await.is_none());
    }
}
