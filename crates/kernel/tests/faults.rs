//! C9 through the facade: the k-th slab allocation fails, for every k a small workload of
//! syscalls, helpers and an accept reaches. Each operation then either succeeds or fails with
//! the kernel's answer (`-ENOMEM`, a NULL helper result), leaves the visible state unchanged
//! when it fails, and the run ends with nothing leaked, no violation and no charge left.
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{Kernel, MapType, ResultExt};
use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE, MapFlags};
use bpfls_local_storage::{Errno, MapAttr};
use bpfls_sync::probe::{FailNth, Probes};
use std::sync::Arc;

/// What a user can see: the values of the (map, owner) pairs, by syscall.
fn visible(k: &Kernel, pairs: &[(i32, i32)]) -> Vec<Result<Vec<u8>, Errno>> {
    pairs.iter().map(|&(m, o)| k.map_lookup_elem(0, m, o).errno()).collect()
}

/// Runs the workload failing the `nth` slab allocation (0: none); returns how many of its
/// operations failed and how many slab allocations it passed.
fn workload(nth: u64, preempt_rt: bool) -> (usize, u64) {
    let hook = Arc::new(FailNth::new("slab_alloc", nth));
    let k = Kernel::builder()
        .preempt_rt(preempt_rt)
        .optmem_max(1 << 16)
        .probes(Probes::with_hook(hook.clone()))
        .build();
    let clone_flags = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    let mt = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let ms = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone_flags)).unwrap();
    let mi = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    let (_, sock) = k.socket_create();
    let (_, inode) = k.inode_create();
    let pairs = [(mt, task), (ms, sock), (mi, inode)];
    let mut failed = 0;
    let mut check = |what: &str, r: Result<(), Errno>, before: Vec<Result<Vec<u8>, Errno>>| {
        match r {
            Ok(()) => {}
            Err(e) => {
                failed += 1;
                assert_eq!(e, Errno::ENOMEM, "nth {nth}: {what}");
                assert_eq!(visible(&k, &pairs), before, "nth {nth}: {what} changed the state");
            }
        }
        assert!(k.check_invariants().is_empty(), "nth {nth}: {what}: {:?}", k.check_invariants());
    };
    for (m, o) in pairs {
        for v in [1u8, 2] {
            let before = visible(&k, &pairs);
            check("update", k.map_update_elem(0, m, o, &[v; 8], BPF_ANY).errno(), before);
        }
        let r = k.map_delete_elem(1, m, o).errno();
        assert!(matches!(r, Ok(()) | Err(Errno::ENOENT)), "nth {nth}: delete: {r:?}");
        let after_delete = visible(&k, &pairs);
        // A program creating the element again: NULL on failure, and nothing changed.
        let got = k.run_prog(1, false, |p| p.storage_get(m, o, None, F_CREATE).is_some());
        check("storage_get", if got { Ok(()) } else { Err(Errno::ENOMEM) }, after_delete);
    }
    let before = visible(&k, &pairs);
    match k.socket_accept(0, sock) {
        Ok((_, child)) => {
            assert_eq!(
                k.map_lookup_elem(0, ms, child).errno(),
                k.map_lookup_elem(0, ms, sock).errno()
            );
            k.socket_close(0, child).unwrap();
        }
        Err(e) => {
            failed += 1;
            assert_eq!(e, Errno::ENOMEM, "nth {nth}: accept");
            assert_eq!(visible(&k, &pairs), before, "nth {nth}: accept changed the state");
        }
    }
    let passes = hook.passes();
    assert_eq!(k.shutdown().unwrap(), 0, "nth {nth}: leaked");
    assert!(k.violations().is_empty(), "nth {nth}: {:?}", k.violations().snapshot());
    (failed, passes)
}

#[test]
fn every_failed_allocation_is_enomem_and_changes_nothing() {
    for preempt_rt in [false, true] {
        let (clean_failures, passes) = workload(0, preempt_rt);
        assert_eq!(clean_failures, 0);
        assert!(passes > 0);
        let mut failures = 0;
        for nth in 1..=passes {
            failures += workload(nth, preempt_rt).0;
        }
        assert!(failures > 0, "preempt_rt {preempt_rt}: no injected failure reached an operation");
        eprintln!(
            "preempt_rt {preempt_rt}: {passes} slab allocations, {failures} failed operations"
        );
    }
}
