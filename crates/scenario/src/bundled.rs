//! The scenarios shipped in `scenarios/`, embedded in the binary: `bpfls list` shows them,
//! `bpfls run NAME` runs one, and `tests/bundled.rs` checks that every file of `scenarios/` is
//! here and behaves as it declares.

/// A bundled scenario: its file name (without `.toml`) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The file name without `.toml` (also its `name`).
    pub name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

impl Bundled {
    /// The path it is reported under: `scenarios/NAME.toml`.
    pub fn path(&self) -> String {
        format!("scenarios/{}.toml", self.name)
    }
}

macro_rules! bundled {
    ($($name:literal),* $(,)?) => {
        &[$(Bundled { name: $name, text: include_str!(concat!("../../../scenarios/", $name, ".toml")) }),*]
    };
}

/// Every bundled scenario, the default one first.
pub const BUNDLED: &[Bundled] = bundled![
    "task-lifecycle",
    "socket-lifecycle",
    "inode-lifecycle",
    "cgroup-lifecycle",
    "r1-first-storage-race",
    "r2-update-vs-last-delete",
    "r3-lookup-cache-vs-delete",
    "r4-map-free-vs-owner-destroy",
    "sleepable-reader-across-rcu-gp",
    "reuse-now-on-task-exit",
    "socket-clone-on-accept",
    "optmem-limit",
    "recursion-guard",
    "map-free-barriers",
    "three-cpus",
    "mutation-skip-cache-recheck",
    "mutation-skip-cache-clear",
    "mutation-delete-reuse-now",
    "mutation-map-free-skip-tasks-trace-barrier",
    "mutation-destroy-skips-uncharge",
    "mutation-map-free-skip-rcu-barrier",
    "mutation-alloc-under-lock",
    "mutation-one-bucket",
    "mutation-free-fields-early",
    "mutation-clone-into-dying-map",
    "mutation-busy-counter-off",
    "mutation-busted-rcu",
];

/// The scenario `bpfls` runs with no arguments.
pub const DEFAULT: &str = "task-lifecycle";

/// The bundled scenario called `name`.
pub fn find(name: &str) -> Option<Bundled> {
    BUNDLED.iter().copied().find(|b| b.name == name)
}
