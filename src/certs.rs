//! Webhook certificates: CA and serving certificate (rcgen), and `kloak certgen`.
