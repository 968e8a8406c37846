//! SIGHUP: the values of file-backed secrets are read again, so a rotated
//! credential takes effect without restarting the command.
//!
//! Placeholders stay as they are (the command already holds them), so a new
//! value must have the old one's length; one that does not is refused and
//! the old value kept. Records already bound to the old value keep it on the
//! wire (`dataplane::retire`): a rotation never breaks a record in flight.

use anyhow::Context;
use tracing::{info, warn};

use crate::config::{self, SecretConfig, SecretSource};
use crate::dataplane::maps::{diff, DesiredState, Records};
use crate::dataplane::DataPlane;

/// What a reload needs: the file-backed secrets by id, and what the kernel holds.
pub struct Reloader {
    files: Vec<(u32, SecretConfig)>,
    records: Records,
}

impl Reloader {
    /// `secrets`: every secret with its id; `records`: what was applied.
    pub fn new(secrets: impl IntoIterator<Item = (u32, SecretConfig)>, records: Records) -> Self {
        let files = secrets
            .into_iter()
            .filter(|(_, secret)| matches!(secret.source, SecretSource::File(_)))
            .collect();
        Self { files, records }
    }

    /// Reads every file again and applies the values that changed; returns how many did.
    pub async fn reload(
        &mut self,
        state: &mut DesiredState,
        dataplane: &DataPlane,
    ) -> anyhow::Result<usize> {
        let changed = self.read_values(state);
        if changed == 0 {
            return Ok(0);
        }
        let records = state.records()?;
        dataplane
            .apply(diff(&self.records, &records))
            .await
            .context("applying the new values")?;
        self.records = records;
        Ok(changed)
    }

    /// Puts each file's current value into `state`; how many changed.
    fn read_values(&self, state: &mut DesiredState) -> usize {
        let mut changed = 0;
        for (id, secret) in &self.files {
            let Some(current) = state.secrets.get_mut(id) else {
                continue;
            };
            // Files only: the environment of a running process does not change.
            let value = match config::load_value(secret, |_| None) {
                Ok(value) => value,
                Err(err) => {
                    warn!(secret = %secret.name, %err, "cannot read the new value; the old one stays");
                    continue;
                }
            };
            if value.as_bytes() == current.value.as_bytes() {
                continue;
            }
            if value.len() != current.value.len() {
                warn!(
                    secret = %secret.name,
                    old_len = current.value.len(),
                    new_len = value.len(),
                    "the new value has another length than the placeholder the command holds; \
                     the old value stays (restart kloak run for a new placeholder)"
                );
                continue;
            }
            current.value = value;
            changed += 1;
            info!(secret = %secret.name, "new value read");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::maps::SecretState;
    use crate::placeholder::SecretValue;
    use crate::policy::Policy;
    use std::fs;

    fn file_secret(name: &str, path: &std::path::Path) -> SecretConfig {
        SecretConfig {
            name: name.into(),
            source: SecretSource::File(path.to_path_buf()),
            policy: Policy::default(),
        }
    }

    #[test]
    fn same_length_values_are_taken_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "sk-new-value-0001\n").unwrap();
        fs::write(&b, "sk-longer-than-before\n").unwrap();
        let mut state = DesiredState::default();
        for (id, old) in [(1, "sk-old-value-0001"), (2, "sk-old-value-0002")] {
            let value = SecretValue::new(old.as_bytes().to_vec());
            let placeholder = crate::placeholder::generate(&value, &mut rand::rngs::OsRng).unwrap();
            state.secrets.insert(
                id,
                SecretState {
                    placeholder,
                    value,
                    policy: Policy::default(),
                },
            );
        }
        let env = SecretConfig {
            name: "C".into(),
            source: SecretSource::Env("C".into()),
            policy: Policy::default(),
        };
        let reloader = Reloader::new(
            [
                (1, file_secret("A", &a)),
                (2, file_secret("B", &b)),
                (3, env),
            ],
            Records::new(),
        );
        assert_eq!(reloader.files.len(), 2);
        assert_eq!(reloader.read_values(&mut state), 1);
        assert_eq!(state.secrets[&1].value.as_bytes(), b"sk-new-value-0001");
        assert_eq!(state.secrets[&2].value.as_bytes(), b"sk-old-value-0002");
        // Nothing changed since: nothing to apply.
        assert_eq!(reloader.read_values(&mut state), 0);
    }
}
