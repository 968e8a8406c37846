//! Decisions as people and machines read them. Names only: never a value.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use crate::dataplane::{Event, EventKind, Reason, Strategy};

/// Turns kernel ids back into the names the user gave.
#[derive(Default)]
pub struct Names {
    pub secrets: BTreeMap<u32, String>,
    pub hosts: BTreeMap<u32, String>,
    /// Why rewriting is off on this kernel, when it is.
    pub rewrite_blocker: Option<String>,
}

impl Names {
    fn secret(&self, id: u32) -> &str {
        self.secrets.get(&id).map_or("?", String::as_str)
    }

    fn detail(&self, event: &Event) -> String {
        match event.reason {
            Reason::RewriteUnavailable => format!(
                "rewrite unavailable: {}",
                self.rewrite_blocker
                    .as_deref()
                    .unwrap_or("observe mode requested")
            ),
            reason => reason.describe().to_owned(),
        }
    }

    /// One line for a terminal, or None for events too chatty to show.
    pub fn human(&self, event: &Event) -> Option<String> {
        let peer = event
            .peer_display()
            .unwrap_or_else(|| "unknown peer".into());
        let who = format!("{}[{}]", event.comm, event.pid);
        Some(match event.kind {
            EventKind::Rewritten => format!(
                "kloak: rewrote {} for {who} -> {peer}{}",
                self.secret(event.secret_id),
                match event.strategy {
                    Some(Strategy::Ciphertext) => " (in the ciphertext)",
                    _ => "",
                }
            ),
            EventKind::Blocked => format!(
                "kloak: placeholder {} sent unchanged by {who} -> {peer}: {}",
                self.secret(event.secret_id),
                self.detail(event)
            ),
            EventKind::DnsAccepted => format!(
                "kloak: trusted DNS answer {} -> {peer} (ttl {}s)",
                self.hosts.get(&event.host_id).map_or("?", String::as_str),
                event.ttl
            ),
            EventKind::DnsRejected => {
                format!("kloak: DNS answer ignored ({peer}): {}", self.detail(event))
            }
            EventKind::ConnectionLearned | EventKind::ExecHeld => return None,
        })
    }

    pub fn json(&self, event: &Event) -> serde_json::Value {
        let mut value = json!({
            "event": event.kind,
            "reason": event.reason,
            "hook": event.hook,
            "pid": event.pid,
            "tid": event.tid,
            "comm": event.comm,
            "cgroup_id": event.cgroup_id,
            "peer": event.peer_display(),
            "fd": event.fd,
        });
        if matches!(event.kind, EventKind::Rewritten | EventKind::Blocked) {
            value["secret"] = json!(self.secret(event.secret_id));
            value["offset"] = json!(event.offset);
            value["encoding"] = json!(event.encoding);
        }
        if let Some(strategy) = event.strategy {
            value["strategy"] = json!(strategy);
        }
        if event.reason != Reason::None {
            value["detail"] = json!(self.detail(event));
        }
        if matches!(event.kind, EventKind::DnsAccepted) {
            value["host"] = json!(self.hosts.get(&event.host_id));
            value["ttl"] = json!(event.ttl);
        }
        value
    }
}

/// Where decisions go: stderr (text or JSON) and optionally a JSON-lines file.
pub struct Reporter {
    pub names: Names,
    pub json: bool,
    pub file: Option<std::fs::File>,
    pub rewritten: u64,
    pub blocked: u64,
}

impl Reporter {
    pub fn report(&mut self, event: &Event) {
        match event.kind {
            EventKind::Rewritten => self.rewritten += 1,
            EventKind::Blocked => self.blocked += 1,
            _ => {}
        }
        tracing::trace!(?event, "decision");
        let line = self.names.json(event);
        if let Some(file) = &mut self.file {
            if let Err(err) = writeln!(file, "{line}") {
                tracing::warn!(%err, "cannot write the events file");
            }
        }
        if self.json {
            eprintln!("{line}");
        } else if let Some(text) = self.names.human(event) {
            eprintln!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::events::{Encoding, Hook};

    fn event(kind: EventKind, reason: Reason) -> Event {
        Event {
            kind,
            reason,
            hook: Hook::SslWrite,
            ts_ns: 1,
            pid: 10,
            tid: 10,
            comm: "curl".into(),
            cgroup_id: 5,
            secret_id: 1,
            offset: 3,
            encoding: Encoding::Plain,
            strategy: None,
            fd: 4,
            peer: Some("127.0.0.1".parse().expect("ip")),
            port: 8443,
            ttl: 0,
            host_id: 0,
        }
    }

    fn names() -> Names {
        Names {
            secrets: BTreeMap::from([(1, "API_KEY".to_owned())]),
            hosts: BTreeMap::new(),
            rewrite_blocker: Some("kernel lockdown=integrity".into()),
        }
    }

    #[test]
    fn blocked_lines_name_secret_peer_and_reason() {
        let line = names()
            .human(&event(EventKind::Blocked, Reason::RewriteUnavailable))
            .expect("shown");
        assert!(line.contains("API_KEY"), "{line}");
        assert!(line.contains("127.0.0.1:8443"), "{line}");
        assert!(
            line.contains("rewrite unavailable: kernel lockdown=integrity"),
            "{line}"
        );
    }

    #[test]
    fn json_carries_machine_names() {
        let value = names().json(&event(EventKind::Blocked, Reason::HostNotAllowed));
        assert_eq!(value["event"], "blocked");
        assert_eq!(value["reason"], "host_not_allowed");
        assert_eq!(value["secret"], "API_KEY");
        assert_eq!(value["peer"], "127.0.0.1:8443");
    }
}
