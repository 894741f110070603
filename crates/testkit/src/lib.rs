//! Harness code shared by the tests and benchmarks of the bpfls crates (a dev-dependency only;
//! never a dependency of a library).
//!
//! The loom driver and the benchmark method used to be copied into every crate that has loom
//! models or benchmarks (`crates/rcu`, `crates/mem_alloc`, `crates/local_storage`); the copies
//! had started to drift. They live here once:
//!
//! - `loom` (only under `--cfg loom`): runs a model at the run's preemption bound, counts
//!   its executions and prints the line that `cargo xtask loom` compares with
//!   `xtask/loom-baseline.txt`; runs known-bad models that loom must catch; tallies outcomes.
//! - [`bench`](mod@bench): interleaved subject / control rounds, per-operation timing, medians, the
//!   watchdog that turns an engine hang into an exit status, and the result tables.
//!
//! Each crate keeps its own fixtures (the objects and worlds its models build) and its own
//! benchmarks and settings. Unlike the core crates this one is not under the `bpfls-sync`
//! rule: it uses `std` directly, and under loom its counters must stay outside the model.

#[cfg(loom)]
pub mod loom;

pub mod bench;
