//! A task's local storage from creation to reclamation, narrated.
//!
//! Run with `cargo run --example task_lifecycle`. The kernel runs in stepped mode, so grace
//! periods move only when this program steps them, and the output is the same every time: each
//! line marked `·` is a probe point the storage code passed (allocations, locks, frees, RCU
//! callbacks queued); `settle` then shows which grace period each queued free waits for.

use bpfls_kernel::{Kernel, MapType, Schedule, Stepper};
use bpfls_local_storage::MapAttr;
use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE};
use bpfls_rcu::{Domain, Step};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
use std::sync::{Arc, Mutex};

/// Prints the probe points worth reading (allocator internals and read sections left out);
/// a run of identical lines prints once, with its count.
#[derive(Default)]
struct Narrator {
    last: Mutex<(String, usize)>,
}

impl Narrator {
    /// Prints the count of a pending run of identical lines.
    fn flush(&self) {
        let mut last = self.last.lock().unwrap();
        if last.1 > 0 {
            println!("      (and {} more)", last.1);
        }
        *last = (String::new(), 0);
    }
}

impl ProbeHook for Narrator {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        let quiet = ["slab_alloc", "slab_free", "mem_cache_active", "read_lock", "read_unlock"];
        if quiet.contains(&e.site) {
            return Verdict::Continue;
        }
        let cpu = e.cpu.map(|c| format!(" cpu{c}")).unwrap_or_default();
        let fields: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v:#x}")).collect();
        let line = format!("    · {}{cpu} {}", e.site, fields.join(" "));
        let mut last = self.last.lock().unwrap();
        if last.0 == line {
            last.1 += 1;
            return Verdict::Continue;
        }
        if last.1 > 0 {
            println!("      (and {} more)", last.1);
        }
        println!("{line}");
        *last = (line, 0);
        Verdict::Continue
    }
}

/// Steps both grace-period domains until nothing is pending, saying what each step did.
fn settle(k: &Kernel) {
    let domains: [(&str, &Domain); 2] =
        [("Tasks-Trace", &k.domains().tasks_trace), ("RCU", &k.domains().rcu)];
    for (name, domain) in domains {
        loop {
            match domain.advance() {
                Step::Idle => break,
                Step::GpStarted { gp_seq } => println!("  {name}: grace period {gp_seq} starts"),
                Step::GpEnded { gp_seq } => println!("  {name}: grace period {gp_seq} ends"),
                Step::Invoked { obj } => println!("  {name}: callback runs, frees obj {obj:#x}"),
                Step::Blocked { gp_seq, reader } => {
                    println!("  {name}: grace period {gp_seq} waits for {reader}");
                    break;
                }
            }
        }
    }
}

fn main() {
    let narrator = Arc::new(Narrator::default());
    let stepper = Stepper::with_tracer(Schedule::Script(vec![]), narrator.clone());
    let k = Kernel::builder().cpus(2).stepped(&stepper).build();

    println!("1. Two task-storage maps and a task. Nothing is allocated per task yet.");
    let counters = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let flags = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (pid, pidfd) = k.task_spawn();
    println!("   maps fd {counters} and fd {flags}; task {pid} (pidfd {pidfd})");

    println!("\n2. The first update creates the task's storage and links the element into it and");
    println!("   into the map's bucket (a compare-and-swap publishes the storage).");
    k.map_update_elem(0, counters, pidfd, &1u64.to_le_bytes(), BPF_ANY).unwrap();

    println!("\n3. A program on CPU 1 creates an element of the second map with the helper: the");
    println!("   storage exists, so only a selem is allocated, outside the storage lock.");
    k.run_prog(1, false, |p| {
        let v = p.storage_get(flags, pidfd, None, BPF_LOCAL_STORAGE_GET_F_CREATE).unwrap();
        v.write("example", &7u64.to_le_bytes()).unwrap();
    });

    println!("\n4. A lookup caches the element in the storage's per-map cache slot.");
    let v = k.map_lookup_elem(0, counters, pidfd).unwrap();
    println!("   counters = {}", u64::from_le_bytes(v.try_into().unwrap()));

    println!("\n5. Deleting an element unlinks it (bucket lock, then storage lock) and queues its");
    println!(
        "   free: readers may still hold it, so it waits for a grace period (reuse_now = false)."
    );
    k.map_delete_elem(0, flags, pidfd).unwrap();
    settle(&k);

    println!("\n6. Task exit: the storage is destroyed after the task's final put, past an RCU");
    println!("   grace period already, so the last element and the storage are reused at once");
    println!("   (reuse_now = true).");
    k.task_exit(0, pidfd).unwrap();
    settle(&k);

    println!(
        "\n7. Closing the last fds frees the maps: synchronize, unlink what is left, barriers."
    );
    k.close(0, counters).unwrap();
    k.close(0, flags).unwrap();
    settle(&k);

    narrator.flush();
    let leaked = k.shutdown().unwrap();
    let s = k.domains().rcu.stats();
    println!(
        "\nDone: {leaked} objects leaked, {} violations; RCU ran {} grace periods and {} callbacks.",
        k.violations().snapshot().len(),
        s.gp_completed,
        s.cbs_invoked
    );
    assert!(leaked == 0 && k.violations().is_empty());
}
