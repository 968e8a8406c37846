//! Mutating admission webhook: points kloak-enabled pods at shadow Secrets.
