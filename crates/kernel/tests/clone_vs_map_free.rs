//! §2.12 step 3 against §2.8: a socket clone running while the last reference to a
//! `BPF_F_CLONE` map drops must skip the map (`bpf_map_inc_not_zero` fails once map_free may
//! run), never copy an element into a map whose buckets map_free has already emptied.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{CpuBody, Kernel, MapType, Schedule, Stepper};
use bpfls_local_storage::flags::{BPF_ANY, MapFlags};
use bpfls_local_storage::{MapAttr, Mutations};
use std::sync::Arc;

/// Two clone maps, several listeners with elements in both; CPU 0 accepts on each listener
/// while CPU 1 closes the last fd of the first map. Returns every problem found, and whether
/// the clones overlapped map_free's bucket walk.
fn accept_during_map_free(seed: u64, mutations: Mutations) -> (Vec<String>, bool) {
    let stepper = Stepper::new(Schedule::Random(seed));
    let builder = Kernel::builder().cpus(4).optmem_max(1 << 20).mutations(mutations);
    let k = Arc::new(builder.stepped(&stepper).build());
    let flags = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    let (m1, m2) = (
        k.map_create(MapType::Sk, MapAttr::new(8).with_flags(flags)).unwrap(),
        k.map_create(MapType::Sk, MapAttr::new(8).with_flags(flags)).unwrap(),
    );
    let listeners: Vec<i32> = (0..4).map(|_| k.socket_create().1).collect();
    for &l in &listeners {
        k.map_update_elem(0, m1, l, &[1; 8], BPF_ANY).unwrap();
        k.map_update_elem(0, m2, l, &[2; 8], BPF_ANY).unwrap();
    }
    let (k0, k1) = (k.clone(), k.clone());
    let ls = listeners.clone();
    let bodies: Vec<CpuBody> = vec![
        Box::new(move || {
            for l in ls {
                let (_, child) = k0.socket_accept(0, l).unwrap();
                // The map that stays has been cloned whatever happened to the other one.
                assert_eq!(k0.map_lookup_elem(0, m2, child).unwrap(), vec![2; 8]);
            }
        }),
        Box::new(move || k1.close(1, m1).unwrap()),
    ];
    let report = stepper.run(bodies);
    // Whether a clone copied an element after map_free's bucket walk began.
    let walk = report.events.iter().position(|e| e.0 == 1 && e.1 == "bucket_lock_acquire");
    let overlapped = walk.is_some_and(|w| report.events[w..].contains(&(0, "selem_alloc")));
    let mut found: Vec<String> = report.results.iter().filter_map(|r| r.clone().err()).collect();
    found.extend(k.check_invariants());
    match k.shutdown() {
        Ok(0) => {}
        other => found.push(format!("shutdown: {other:?}")),
    }
    found.extend(k.violations().snapshot().iter().map(|v| format!("{v:?}")));
    (found, overlapped)
}

#[test]
fn a_clone_skips_a_map_whose_last_reference_dropped() {
    // Before the clone checked for a dying map (it checked for a freed one), seed 0 already
    // left a child's element linked into the freed map (I4).
    let mut overlaps = 0;
    for seed in 0..300 {
        let (found, overlapped) = accept_during_map_free(seed, Mutations::default());
        assert!(found.is_empty(), "seed {seed}: {found:?}");
        overlaps += usize::from(overlapped);
    }
    assert!(overlaps > 0, "no schedule ran a clone during map_free's bucket walk");
    eprintln!("{overlaps} of 300 schedules cloned during map_free's bucket walk");
}

#[test]
fn the_checker_catches_a_clone_into_a_dying_map() {
    // The mutation restores the old check (only a finished map_free stops a clone): some
    // schedule then leaves a child's copy linked into the freed map, which check_invariants
    // reports.
    let mutated = Mutations { clone_into_dying_map: true, ..Mutations::default() };
    let found = (0..300).find_map(|seed| {
        let (found, _) = accept_during_map_free(seed, mutated);
        (!found.is_empty()).then_some((seed, found))
    });
    let (seed, found) = found.expect("no seed of 300 caught the clone into a dying map");
    assert!(found.iter().any(|p| p.contains("which map_free has freed")), "seed {seed}: {found:?}");
}
