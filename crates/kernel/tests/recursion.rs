//! C10: the kernel's `task_ls_recursion` selftest, on the bpf_ma profile (busy counter).
//!
//! Three tracing programs, as in `tools/testing/selftests/bpf/progs/task_ls_recursion.c`:
//! `on_enter` (on the `sys_enter` tracepoint of the task's next syscall) gets-or-creates the task's elements of maps A and B
//! and sets them to 200 and 100 when new; `on_update` (fentry on `bpf_local_storage_update`)
//! gets-or-creates both and adds 1 to each it gets; `on_lookup` (fentry on
//! `bpf_local_storage_lookup`) deletes both. Every nested call meets the busy counter the
//! outer helper holds on the CPU: nested creates get NULL, nested deletes of an existing
//! element `-EBUSY`, so nothing deadlocks and the selftest's values come out: A = 201 (its
//! `on_update` increment happens when B is created), B = 100. A program never re-enters
//! itself (the trampoline's per-CPU `prog->active`), which the selftest counts as
//! recursion misses.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{Kernel, MapType, ProgSpec, ProgType, ResultExt};
use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
use bpfls_local_storage::{Errno, MapAttr};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

#[derive(Default)]
struct Selftest {
    kernel: OnceLock<Arc<Kernel>>,
    /// (map A, map B, the test task's pidfd).
    target: OnceLock<(i32, i32, i32)>,
    /// The selftest's `test_pid`: the programs act only while it is set.
    armed: AtomicBool,
    on_enter_active: AtomicBool,
    on_enter_runs: AtomicU64,
    on_enter_misses: AtomicU64,
    on_lookup_active: AtomicBool,
    on_update_active: AtomicBool,
    on_lookup_runs: AtomicU64,
    on_update_runs: AtomicU64,
    on_lookup_misses: AtomicU64,
    on_update_misses: AtomicU64,
    nr_del_errs: AtomicU64,
}

fn tracing() -> ProgSpec {
    ProgSpec::new(ProgType::Tracing)
}

fn get_u64(v: &bpfls_kernel::Value<'_>) -> u64 {
    u64::from_le_bytes(v.read("task_ls_recursion").unwrap().try_into().unwrap())
}

fn set_u64(v: &bpfls_kernel::Value<'_>, x: u64) {
    v.write("task_ls_recursion", &x.to_le_bytes()).unwrap();
}

impl Selftest {
    /// Runs `body` as the program guarded by `active`, unless it is already running.
    fn enter(
        &self,
        active: &AtomicBool,
        runs: &AtomicU64,
        misses: &AtomicU64,
        body: impl FnOnce(),
    ) {
        if active.swap(true, Ordering::SeqCst) {
            misses.fetch_add(1, Ordering::SeqCst);
            return;
        }
        runs.fetch_add(1, Ordering::SeqCst);
        body();
        active.store(false, Ordering::SeqCst);
    }
}

impl ProbeHook for Selftest {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        let (Some(k), Some(&(a, b, task))) = (self.kernel.get(), self.target.get()) else {
            return Verdict::Continue;
        };
        if !self.armed.load(Ordering::SeqCst) {
            return Verdict::Continue;
        }
        let cpu = e.cpu.unwrap_or(0);
        match e.site {
            "local_storage_lookup" => self.enter(
                &self.on_lookup_active,
                &self.on_lookup_runs,
                &self.on_lookup_misses,
                || {
                    k.run(cpu, tracing(), |p| {
                        if p.storage_delete(a, task).errno() == Err(Errno::EBUSY) {
                            self.nr_del_errs.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = p.storage_delete(b, task);
                    })
                    .unwrap();
                },
            ),
            "local_storage_update" => self.enter(
                &self.on_update_active,
                &self.on_update_runs,
                &self.on_update_misses,
                || {
                    k.run(cpu, tracing(), |p| {
                        for m in [a, b] {
                            if let Some(v) = p.storage_get(m, task, None, F_CREATE) {
                                set_u64(&v, get_u64(&v) + 1);
                            }
                        }
                    })
                    .unwrap();
                },
            ),
            "sys_enter" => self.enter(
                &self.on_enter_active,
                &self.on_enter_runs,
                &self.on_enter_misses,
                || {
                    k.run(cpu, tracing(), |p| {
                        for (m, init) in [(a, 200), (b, 100)] {
                            if let Some(v) = p.storage_get(m, task, None, F_CREATE)
                                && get_u64(&v) == 0
                            {
                                set_u64(&v, init);
                            }
                        }
                    })
                    .unwrap();
                },
            ),
            _ => {}
        }
        Verdict::Continue
    }
}

#[test]
fn task_ls_recursion_gives_the_selftests_values_without_deadlock() {
    let hook = Arc::new(Selftest::default());
    let k = Arc::new(Kernel::builder().cpus(2).probes(Probes::with_hook(hook.clone())).build());
    let _ = hook.kernel.set(k.clone());
    let a = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let b = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    let _ = hook.target.set((a, b, task));
    hook.armed.store(true, Ordering::SeqCst);

    // The task's syscall on CPU 0: on_enter runs at its sys_enter, then the syscall itself
    // (a lookup of A, which on_lookup meets with the syscall's busy counter held).
    let first = k.map_lookup_elem(0, a, task).unwrap();
    assert_eq!(first, 201u64.to_le_bytes(), "the syscall sees what on_enter left");
    assert_eq!(hook.on_enter_runs.load(Ordering::SeqCst), 1);
    assert_eq!(hook.on_enter_misses.load(Ordering::SeqCst), 0, "on_enter never recurses");
    // Read back with the programs disarmed (the selftest clears test_pid first).
    hook.armed.store(false, Ordering::SeqCst);
    let counts = (
        hook.on_lookup_runs.load(Ordering::SeqCst),
        hook.on_update_runs.load(Ordering::SeqCst),
        hook.on_lookup_misses.load(Ordering::SeqCst),
        hook.on_update_misses.load(Ordering::SeqCst),
        hook.nr_del_errs.load(Ordering::SeqCst),
    );
    let read = |m| u64::from_le_bytes(k.map_lookup_elem(1, m, task).unwrap().try_into().unwrap());
    let (va, vb) = (read(a), read(b));
    assert_eq!((va, vb), (201, 100), "map A / map B as the selftest expects; counts {counts:?}");
    eprintln!(
        "task_ls_recursion: A = {va}, B = {vb}; on_lookup ran {} (recursion misses {}), \
         on_update ran {} (misses {}), -EBUSY deletes {}",
        counts.0, counts.2, counts.1, counts.3, counts.4
    );
    // The selftest's recursion checks: on_lookup recurses into itself through its own
    // delete's lookup (misses > 0); on_update never does (its nested creates are refused).
    assert!(counts.2 > 0 && counts.3 == 0, "{counts:?}");
    assert!(counts.4 >= 1, "a nested delete of an existing element met the busy counter");
    assert!(k.check_invariants().is_empty(), "{:?}", k.check_invariants());
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}
