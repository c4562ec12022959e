//! `quic_app::queue`, compiled on its own so `--cfg loom` swaps its locks for loom's.

#[path = "../../crates/quic-app/src/queue/mod.rs"]
pub mod queue;
