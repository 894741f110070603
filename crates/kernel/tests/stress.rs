//! C11 through the facade, threaded mode: maps freed while owners hold elements, owners dying
//! while maps are freed, programs and syscalls on every CPU at once. Every result is one the
//! kernel can give; at the end the invariants hold, nothing leaked and no violation.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle, miri)))]

use bpfls_kernel::{Kernel, MapType, ResultExt};
use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE};
use bpfls_local_storage::{Errno, MapAttr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const OWNERS: usize = 64;

fn stress_free(ty: MapType) {
    let k = Arc::new(Kernel::builder().cpus(3).optmem_max(1 << 20).build());
    let maps: Vec<i32> = (0..4).map(|_| k.map_create(ty, MapAttr::new(16)).unwrap()).collect();
    let owners: Vec<i32> = (0..OWNERS)
        .map(|_| match ty {
            MapType::Task => k.task_spawn().1,
            MapType::Sk => k.socket_create().1,
            MapType::Inode => k.inode_create().1,
            MapType::Cgrp => k.cgroup_mkdir().1,
        })
        .collect();
    let end_owner = |k: &Kernel, fd: i32| match ty {
        MapType::Task => k.task_exit(2, fd),
        MapType::Sk => k.socket_close(2, fd),
        MapType::Inode => k.inode_evict(2, fd),
        MapType::Cgrp => k.cgroup_rmdir(2, fd),
    };
    let done = AtomicBool::new(false);
    let (oks, ebadf) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        // Two CPUs fill every (map, owner) pair, by syscall and by program, and read back,
        // until the third CPU has freed every map (so they surely overlap with it).
        for cpu in 0..2u32 {
            let (k, maps, owners, done, oks, ebadf) = (&k, &maps, &owners, &done, &oks, &ebadf);
            s.spawn(move || {
                let mut round = 0u8;
                while round < 2 || !done.load(Ordering::Acquire) {
                    round = round.wrapping_add(1);
                    for (i, &o) in owners.iter().enumerate() {
                        for &m in maps {
                            let r = k.map_update_elem(cpu, m, o, &[round; 16], BPF_ANY).errno();
                            // A closed map's fd: -EBADF; a dead owner: -EBADF/-ENOENT; the
                            // bpf_ma cache momentarily empty: -ENOMEM; races: -EAGAIN.
                            assert!(
                                matches!(
                                    r,
                                    Ok(())
                                        | Err(Errno::EBADF | Errno::ENOENT | Errno::ENOMEM)
                                        | Err(Errno::EAGAIN)
                                ),
                                "update: {r:?}"
                            );
                            match r {
                                Ok(()) => oks.fetch_add(1, Ordering::Relaxed),
                                Err(Errno::EBADF) => ebadf.fetch_add(1, Ordering::Relaxed),
                                Err(_) => 0,
                            };
                            k.run_prog(cpu, i % 2 == 0, |p| {
                                if let Some(v) = p.storage_get(m, o, None, F_CREATE) {
                                    v.read("stress: program read").expect("a live value");
                                }
                            });
                        }
                    }
                }
            });
        }
        // The third CPU frees the maps and ends half of the owners meanwhile.
        let (k, maps, owners, done, oks) = (&k, &maps, &owners, &done, &oks);
        s.spawn(move || {
            // Start once the workers are under way, so the frees land in the middle of them.
            while oks.load(Ordering::Relaxed) < OWNERS as u64 {
                std::thread::yield_now();
            }
            for (i, &o) in owners.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
                end_owner(k, o).unwrap();
                if i % 16 == 15 {
                    k.close(2, maps[i / 16]).unwrap();
                }
                std::thread::yield_now();
            }
            // ORDERING: Release pairs with the workers' Acquire load: they see the maps closed.
            done.store(true, Ordering::Release);
        });
    });
    let (oks, ebadf) = (oks.into_inner(), ebadf.into_inner());
    assert!(oks > 0 && ebadf > 0, "updates before and after the frees: {oks} ok, {ebadf} EBADF");
    assert!(k.check_invariants().is_empty(), "{:?}", k.check_invariants());
    assert_eq!(k.shutdown().unwrap(), 0, "leaked");
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

#[test]
fn task_maps_and_owners_die_under_load() {
    stress_free(MapType::Task);
}

#[test]
fn socket_maps_and_owners_die_under_load() {
    stress_free(MapType::Sk);
}

#[test]
fn inode_maps_and_owners_die_under_load() {
    stress_free(MapType::Inode);
}

#[test]
fn cgroup_maps_and_owners_die_under_load() {
    stress_free(MapType::Cgrp);
}
