//! ntpscope's end-to-end and whole-workspace test suite (one binary, as vector and
//! rust-analyzer keep theirs: every file under `tests/` would otherwise be a separate link).
//!
//! - [`architecture`]: the dependency invariants of ARCHITECTURE.md, checked on `cargo metadata`.
//! - [`tidy`]: every Rust file starts with a `//!` comment saying what it is for.

mod architecture;
mod tidy;
