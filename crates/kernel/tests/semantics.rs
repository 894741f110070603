//! The behavioural spec, rule by rule, against the facade's public API: each row of the
//! per-owner-type table (kernel-semantics.md §1.6: zeroed values, owner lifetimes, storages
//! shared by several maps, the socket charge), map creation (§2.1), map lifetime as the clone
//! sees it (§2.8), the front-ends (§2.11: helpers, syscalls and their keys, update flags,
//! contexts, the recursion guard) and socket clone (§2.12), plus the kernel spelling of every
//! error the facade reports (`ENOENT (2): no element for task 1 in map fd 3`).
//!
//! Complements `facade.rs` (which has the first-order errno rules, the optmem limit on the
//! syscall path, one clone map, zeroed inode values and the nested `_recur` get/delete of a
//! present task element) without repeating it. Every test ends with nothing leaked and no
//! violation reported.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{Context, Error, Kernel, MapType, ProgSpec, ProgType, ResultExt, btf};
use bpfls_local_storage::flags::{
    BPF_ANY, BPF_EXIST, BPF_F_LOCK, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE, BPF_NOEXIST,
    MapFlags,
};
use bpfls_local_storage::map::{MAX_VALUE_SIZE, SELEM_HDR};
use bpfls_local_storage::{Errno, MapAttr, TypeConfig, ValueLayout};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::{Arc, Mutex, OnceLock, Weak};

const ALL: [MapType; 4] = [MapType::Task, MapType::Sk, MapType::Inode, MapType::Cgrp];

/// Nothing leaked, nothing reported.
fn clean(k: &Kernel) {
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

/// A new owner of the kind `ty` stores for: (id, fd).
fn spawn(k: &Kernel, ty: MapType) -> (u64, i32) {
    match ty {
        MapType::Task => k.task_spawn(),
        MapType::Sk => k.socket_create(),
        MapType::Inode => k.inode_create(),
        MapType::Cgrp => k.cgroup_mkdir(),
    }
}

/// Ends the owner (task exit, socket close, inode eviction, cgroup rmdir).
fn end(k: &Kernel, cpu: u32, ty: MapType, fd: i32) -> Result<(), Error> {
    match ty {
        MapType::Task => k.task_exit(cpu, fd),
        MapType::Sk => k.socket_close(cpu, fd),
        MapType::Inode => k.inode_evict(cpu, fd),
        MapType::Cgrp => k.cgroup_rmdir(cpu, fd),
    }
}

/// How messages name an owner of this kind.
fn owner_name(ty: MapType) -> &'static str {
    match ty {
        MapType::Task => "task",
        MapType::Sk => "socket",
        MapType::Inode => "inode",
        MapType::Cgrp => "cgroup",
    }
}

/// How messages name a syscall key of this kind.
fn key_name(ty: MapType) -> &'static str {
    match ty {
        MapType::Task => "a pidfd",
        MapType::Sk => "a socket fd",
        MapType::Inode => "an inode's fd",
        MapType::Cgrp => "a cgroup fd",
    }
}

/// Another owner kind than `ty`.
fn other(ty: MapType) -> MapType {
    match ty {
        MapType::Task => MapType::Sk,
        MapType::Sk => MapType::Inode,
        MapType::Inode => MapType::Cgrp,
        MapType::Cgrp => MapType::Task,
    }
}

/// `sizeof(struct bpf_local_storage)` as charged to a socket.
fn storage_size() -> u64 {
    TypeConfig::socket_like(1).storage_size as u64
}

/// `elem_size` of a map with `value_size`-byte values.
fn elem_size(value_size: u32) -> u64 {
    (SELEM_HDR + value_size as usize) as u64
}

fn clone_flags() -> u32 {
    (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits()
}

fn spin_lock_attr(value_size: u32) -> MapAttr {
    MapAttr::new(value_size).with_layout(ValueLayout { spin_lock: true, ..ValueLayout::default() })
}

/// Storages of `ty` out of their slab once every pending free has run. Exact for the kmalloc
/// types (socket, inode); the bpf_ma types (task, cgroup) keep freed objects in per-CPU caches,
/// so for them the invariants (I5: an owner points at no storage or a non-empty one) are the
/// observation instead.
fn live_storages(k: &Kernel, ty: MapType) -> u64 {
    assert!(matches!(ty, MapType::Sk | MapType::Inode));
    k.domains().rcu.barrier();
    k.domains().barrier_all();
    k.domains().rcu.barrier();
    k.storage(ty).storage_slab().stats().outstanding
}

/// The error has the kernel spelling `NAME (code): detail`, this errno, and every part.
#[track_caller]
fn assert_error(e: &Error, errno: Errno, parts: &[&str]) {
    let s = e.to_string();
    assert_eq!(e.errno(), errno, "{s}");
    let prefix = format!("{} ({}): ", errno.name(), errno.code());
    assert!(s.starts_with(&prefix), "{s:?} does not start with {prefix:?}");
    for p in parts {
        assert!(s.contains(p), "{s:?} does not name {p:?}");
    }
}

// ----- §1.6 rows: values, owners, storages ------------------------------------------------------

#[test]
fn values_start_zeroed_for_every_map_type() {
    for ty in ALL {
        let k = Kernel::builder().build();
        let map = k.map_create(ty, MapAttr::new(24)).unwrap();
        let (_, o) = spawn(&k, ty);
        let got = k.run_prog(0, false, |p| {
            p.storage_get(map, o, None, F_CREATE).map(|v| v.read("prog").unwrap())
        });
        assert_eq!(got, Some(vec![0; 24]), "{ty:?}: a fresh element is zeroed");
        // A recycled element is zeroed too: dirty one, delete it, let its free run (the
        // bpf_ma types hand the object straight back to the per-CPU cache), create again.
        k.map_update_elem(0, map, o, &[0xa5; 24], BPF_EXIST).unwrap();
        k.map_delete_elem(0, map, o).unwrap();
        k.domains().barrier_all();
        let got = k.run_prog(0, false, |p| {
            p.storage_get(map, o, None, F_CREATE).map(|v| v.read("prog").unwrap())
        });
        assert_eq!(got, Some(vec![0; 24]), "{ty:?}: no stale bytes in a recycled element");
        assert_eq!(k.map_lookup_elem(1, map, o).unwrap(), vec![0; 24], "{ty:?}");
        end(&k, 0, ty, o).unwrap();
        clean(&k);
    }
}

#[test]
fn create_delete_and_recreate_inside_one_program_for_every_map_type() {
    for ty in ALL {
        let k = Kernel::builder().optmem_max(1 << 16).build();
        let map = k.map_create(ty, MapAttr::new(16)).unwrap();
        let (_, o) = spawn(&k, ty);
        k.run_prog(0, false, |p| {
            let first = p.storage_get(map, o, Some(&[1; 16]), F_CREATE).expect("created");
            assert_eq!(first.read("prog").unwrap(), vec![1; 16]);
            assert_eq!(p.storage_delete(map, o), Ok(()));
            // The deleted element is freed after a grace period, never under the program.
            assert_eq!(first.read("deleted, still in the section").unwrap(), vec![1; 16]);
            assert!(p.storage_get(map, o, None, 0).is_none(), "{ty:?}: gone");
            assert_eq!(p.storage_delete(map, o).errno(), Err(Errno::ENOENT));
            let second = p.storage_get(map, o, None, F_CREATE).expect("re-created");
            assert_eq!(second.read("prog").unwrap(), vec![0; 16], "{ty:?}: zeroed");
            second.write("prog", &[2; 16]).unwrap();
            assert_eq!(p.storage_delete(map, o), Ok(()));
            let third = p.storage_get(map, o, Some(&[3; 16]), F_CREATE).expect("again");
            assert_eq!(third.read("prog").unwrap(), vec![3; 16]);
        });
        assert_eq!(k.map_lookup_elem(1, map, o).unwrap(), vec![3; 16], "{ty:?}");
        if ty == MapType::Sk {
            assert_eq!(k.socket_charge(o).unwrap(), storage_size() + elem_size(16));
        }
        assert_eq!(k.check_invariants(), Vec::<String>::new(), "{ty:?}");
        end(&k, 0, ty, o).unwrap();
        clean(&k);
    }
}

/// Task and cgroup: the pidfd / cgroup fd outlives its owner and names a dead one.
fn no_create_on_a_dead_owner_whose_fd_stays_open(ty: MapType) {
    let k = Kernel::builder().build();
    let map = k.map_create(ty, MapAttr::new(8)).unwrap();
    let (id, fd) = spawn(&k, ty);
    let who = format!("{} {id}", owner_name(ty));
    k.map_update_elem(0, map, fd, &[1; 8], BPF_ANY).unwrap();
    end(&k, 1, ty, fd).unwrap();
    for spec in [ProgSpec::new(ProgType::Lsm), ProgSpec::new(ProgType::Tracing)] {
        k.run(0, spec, |p| {
            assert!(p.storage_get(map, fd, None, 0).is_none(), "destroyed with its owner");
            assert!(p.storage_get(map, fd, None, F_CREATE).is_none(), "no create when dead");
            assert!(p.storage_get(map, fd, Some(&[2; 8]), F_CREATE).is_none());
            let e = p.storage_delete(map, fd).unwrap_err();
            assert_error(&e, Errno::ENOENT, &[&who, &format!("map fd {map}")]);
        })
        .unwrap();
    }
    let gone = format!("{who} is gone");
    assert_error(&k.map_lookup_elem(0, map, fd).unwrap_err(), Errno::ENOENT, &[&gone]);
    for flags in [BPF_ANY, BPF_NOEXIST] {
        let e = k.map_update_elem(0, map, fd, &[3; 8], flags).unwrap_err();
        assert_error(&e, Errno::ENOENT, &[&gone]);
    }
    assert_error(&k.map_delete_elem(0, map, fd).unwrap_err(), Errno::ENOENT, &[&gone]);
    let e = end(&k, 0, ty, fd).unwrap_err();
    assert_error(&e, Errno::ENOENT, &[&format!("{who} has already ended")]);
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    // Once the fd itself is closed it names nothing: -EBADF, and a NULL owner for helpers.
    k.close(0, fd).unwrap();
    let not_open = format!("fd {fd} is not open");
    assert_error(&k.map_lookup_elem(0, map, fd).unwrap_err(), Errno::EBADF, &[&not_open]);
    k.run_prog(0, false, |p| {
        assert!(p.storage_get(map, fd, None, F_CREATE).is_none());
        assert_eq!(p.storage_delete(map, fd).errno(), Err(Errno::EINVAL));
    });
    clean(&k);
}

#[test]
fn no_create_on_an_exited_task() {
    no_create_on_a_dead_owner_whose_fd_stays_open(MapType::Task);
}

#[test]
fn no_create_on_a_removed_cgroup() {
    no_create_on_a_dead_owner_whose_fd_stays_open(MapType::Cgrp);
}

/// Socket and inode: the owner's fd goes with it.
fn an_ended_owners_fd_is_gone(ty: MapType) {
    let k = Kernel::builder().build();
    let map = k.map_create(ty, MapAttr::new(8)).unwrap();
    let (_, fd) = spawn(&k, ty);
    k.map_update_elem(0, map, fd, &[1; 8], BPF_ANY).unwrap();
    end(&k, 1, ty, fd).unwrap();
    for spec in [ProgSpec::new(ProgType::Lsm), ProgSpec::new(ProgType::Tracing)] {
        k.run(0, spec, |p| {
            assert!(p.storage_get(map, fd, None, 0).is_none());
            assert!(p.storage_get(map, fd, None, F_CREATE).is_none(), "no create");
            let e = p.storage_delete(map, fd).unwrap_err();
            assert_error(&e, Errno::EINVAL, &[&format!("fd {fd} names no {}", owner_name(ty))]);
        })
        .unwrap();
    }
    let not_open = format!("fd {fd} is not open");
    assert_error(&k.map_lookup_elem(0, map, fd).unwrap_err(), Errno::EBADF, &[&not_open]);
    let e = k.map_update_elem(0, map, fd, &[2; 8], BPF_ANY).unwrap_err();
    assert_error(&e, Errno::EBADF, &[&not_open]);
    assert_error(&k.map_delete_elem(0, map, fd).unwrap_err(), Errno::EBADF, &[&not_open]);
    assert_error(&end(&k, 0, ty, fd).unwrap_err(), Errno::EBADF, &[&not_open]);
    if ty == MapType::Sk {
        assert_error(&k.socket_charge(fd).unwrap_err(), Errno::EBADF, &[&not_open]);
        assert_eq!(k.socket_accept(0, fd).errno(), Err(Errno::EBADF));
    }
    assert_eq!(live_storages(&k, ty), 0, "{ty:?}: the storage went with its owner");
    clean(&k);
}

#[test]
fn a_closed_sockets_fd_is_gone() {
    an_ended_owners_fd_is_gone(MapType::Sk);
}

#[test]
fn an_evicted_inodes_fd_is_gone() {
    an_ended_owners_fd_is_gone(MapType::Inode);
}

#[test]
fn a_null_owner_gets_none_and_delete_einval_and_changes_nothing() {
    for ty in ALL {
        let k = Kernel::builder().build();
        let map = k.map_create(ty, MapAttr::new(8)).unwrap();
        let (_, o) = spawn(&k, ty);
        let (_, wrong_kind) = spawn(&k, other(ty));
        let other_map = k.map_create(ty, MapAttr::new(8)).unwrap();
        for spec in [ProgSpec::new(ProgType::Lsm), ProgSpec::new(ProgType::Tracing)] {
            k.run(0, spec, |p| {
                for bad in [-1, 9999, wrong_kind, other_map] {
                    assert!(p.storage_get(map, bad, None, F_CREATE).is_none(), "{ty:?} {bad}");
                    assert!(p.storage_get(map, bad, Some(&[1; 8]), F_CREATE).is_none());
                    assert!(p.storage_get(map, bad, None, 0).is_none());
                    let e = p.storage_delete(map, bad).unwrap_err();
                    let names = format!("fd {bad} names no {}", owner_name(ty));
                    assert_error(&e, Errno::EINVAL, &[&names]);
                }
            })
            .unwrap();
        }
        assert_eq!(k.check_invariants(), Vec::<String>::new(), "{ty:?}");
        if other(ty) == MapType::Sk {
            assert_eq!(k.socket_charge(wrong_kind).unwrap(), 0, "nothing charged to it");
        }
        // The real owner is unaffected and later operations work.
        k.run_prog(1, false, |p| {
            assert!(p.storage_get(map, o, Some(&[5; 8]), F_CREATE).is_some());
        });
        assert_eq!(k.map_lookup_elem(0, map, o).unwrap(), vec![5; 8]);
        assert_eq!(k.map_lookup_elem(0, other_map, o).errno(), Err(Errno::ENOENT));
        k.map_delete_elem(0, map, o).unwrap();
        end(&k, 0, ty, o).unwrap();
        end(&k, 0, other(ty), wrong_kind).unwrap();
        clean(&k);
    }
}

#[test]
fn a_storage_outlives_its_creating_element_and_goes_with_its_last() {
    for ty in ALL {
        let k = Kernel::builder().optmem_max(1 << 16).build();
        let creator = k.map_create(ty, MapAttr::new(8)).unwrap();
        let b = k.map_create(ty, MapAttr::new(16)).unwrap();
        let c = k.map_create(ty, MapAttr::new(24)).unwrap();
        let (_, o) = spawn(&k, ty);
        let storages = |n: u64| {
            if matches!(ty, MapType::Sk | MapType::Inode) {
                assert_eq!(live_storages(&k, ty), n, "{ty:?}: storages");
            }
            assert_eq!(k.check_invariants(), Vec::<String>::new(), "{ty:?}");
        };
        let charge = |want: u64| {
            if ty == MapType::Sk {
                assert_eq!(k.socket_charge(o).unwrap(), want, "{ty:?}: charge");
            }
        };
        // The first element (of `creator`) creates the storage; the others join it.
        k.run_prog(0, false, |p| {
            assert!(p.storage_get(creator, o, Some(&[1; 8]), F_CREATE).is_some());
            assert!(p.storage_get(b, o, Some(&[2; 16]), F_CREATE).is_some());
        });
        k.map_update_elem(1, c, o, &[3; 24], BPF_NOEXIST).unwrap();
        storages(1);
        charge(storage_size() + elem_size(8) + elem_size(16) + elem_size(24));
        // Delete the creating element, then free its map: the storage stays with the others.
        k.map_delete_elem(0, creator, o).unwrap();
        storages(1);
        charge(storage_size() + elem_size(16) + elem_size(24));
        k.close(1, creator).unwrap();
        assert_eq!(k.map_lookup_elem(0, b, o).unwrap(), vec![2; 16], "{ty:?}");
        assert_eq!(k.map_lookup_elem(0, c, o).unwrap(), vec![3; 24], "{ty:?}");
        storages(1);
        // A helper delete, then the last element goes with its map (map_free, §2.8): the
        // storage goes with it and the owner points at none (I5).
        k.run_prog(1, false, |p| assert_eq!(p.storage_delete(b, o), Ok(())));
        storages(1);
        charge(storage_size() + elem_size(24));
        k.close(0, c).unwrap();
        storages(0);
        charge(0);
        // A new first element makes a new storage.
        k.map_update_elem(0, b, o, &[4; 16], BPF_ANY).unwrap();
        storages(1);
        charge(storage_size() + elem_size(16));
        k.map_delete_elem(1, b, o).unwrap();
        storages(0);
        charge(0);
        end(&k, 0, ty, o).unwrap();
        clean(&k);
    }
}

// ----- the socket charge (§1.6, §2.9) ------------------------------------------------------------

#[test]
fn the_socket_charge_follows_its_elements_back_to_zero() {
    let k = Kernel::builder().optmem_max(1 << 16).build();
    let plain = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let locked = k.map_create(MapType::Sk, spin_lock_attr(32)).unwrap();
    let (_, s) = k.socket_create();
    assert_eq!(k.socket_charge(s).unwrap(), 0, "no storage, no charge");
    k.run_prog(0, false, |p| assert!(p.storage_get(plain, s, None, F_CREATE).is_some()));
    let one = storage_size() + elem_size(8);
    assert_eq!(k.socket_charge(s).unwrap(), one);
    k.map_update_elem(1, locked, s, &[1; 32], BPF_NOEXIST).unwrap();
    let both = one + elem_size(32);
    assert_eq!(k.socket_charge(s).unwrap(), both);
    // Same-size replaces (a new element each, the old one uncharged) and an in-place F_LOCK
    // update leave the charge as it was; so do refused updates.
    k.map_update_elem(0, plain, s, &[2; 8], BPF_ANY).unwrap();
    k.map_update_elem(1, plain, s, &[3; 8], BPF_EXIST).unwrap();
    k.map_update_elem(0, locked, s, &[4; 32], BPF_ANY).unwrap();
    k.map_update_elem(0, locked, s, &[5; 32], BPF_F_LOCK | BPF_EXIST).unwrap();
    assert_eq!(k.map_update_elem(0, plain, s, &[6; 8], BPF_NOEXIST).errno(), Err(Errno::EEXIST));
    assert_eq!(k.map_update_elem(0, plain, s, &[6; 8], 8).errno(), Err(Errno::EINVAL));
    assert_eq!(k.socket_charge(s).unwrap(), both);
    assert_eq!(k.map_lookup_elem(0, plain, s).unwrap(), vec![3; 8]);
    assert_eq!(k.map_lookup_elem(0, locked, s).unwrap(), vec![5; 32]);
    // Deletes give it back, the storage's share with the last element.
    k.run_prog(1, false, |p| assert_eq!(p.storage_delete(plain, s), Ok(())));
    assert_eq!(k.socket_charge(s).unwrap(), storage_size() + elem_size(32));
    k.map_delete_elem(0, locked, s).unwrap();
    assert_eq!(k.socket_charge(s).unwrap(), 0);
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    // After close the fd is gone.
    k.map_update_elem(0, plain, s, &[7; 8], BPF_ANY).unwrap();
    k.socket_close(1, s).unwrap();
    assert_eq!(k.socket_charge(s).errno(), Err(Errno::EBADF));
    assert_eq!(live_storages(&k, MapType::Sk), 0);
    clean(&k);
}

#[test]
fn optmem_max_refuses_helpers_and_replaces_and_keeps_the_charge() {
    // storage 176 + 80 per 8-byte element, and the charge must stay strictly below the
    // limit: 176 + 2 × 80 = 336 fits under 416, the third element (416) does not (§2.9).
    let k = Kernel::builder().optmem_max(416).build();
    let a = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let b = k.map_create(MapType::Sk, spin_lock_attr(8)).unwrap();
    let c = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let (id, s) = k.socket_create();
    k.map_update_elem(0, a, s, &[1; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, b, s, &[2; 8], BPF_ANY).unwrap();
    let full = storage_size() + 2 * elem_size(8);
    assert_eq!(k.socket_charge(s).unwrap(), full);
    // The helper's create fails: NULL, and nothing changed.
    k.run_prog(1, false, |p| {
        assert!(p.storage_get(c, s, None, F_CREATE).is_none(), "over optmem_max");
        assert!(p.storage_get(c, s, Some(&[3; 8]), F_CREATE).is_none());
        assert_eq!(p.storage_get(a, s, None, F_CREATE).unwrap().read("prog").unwrap(), [1; 8]);
    });
    let e = k.map_update_elem(0, c, s, &[3; 8], BPF_ANY).unwrap_err();
    assert_error(&e, Errno::ENOMEM, &[&format!("socket {id}"), &format!("map fd {c}")]);
    assert_eq!(k.socket_charge(s).unwrap(), full);
    // A replace charges its new element before the old one is uncharged: refused at the limit
    // too (current kernels), the old value intact. An in-place F_LOCK update allocates nothing.
    assert_eq!(k.map_update_elem(0, a, s, &[9; 8], BPF_EXIST).errno(), Err(Errno::ENOMEM));
    assert_eq!(k.map_update_elem(0, b, s, &[8; 8], BPF_F_LOCK).errno(), Ok(()));
    assert_eq!(k.socket_charge(s).unwrap(), full);
    assert_eq!(k.map_lookup_elem(1, a, s).unwrap(), vec![1; 8]);
    assert_eq!(k.map_lookup_elem(1, b, s).unwrap(), vec![8; 8]);
    assert_eq!(k.map_lookup_elem(1, c, s).errno(), Err(Errno::ENOENT));
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    // Room again after a delete.
    k.map_delete_elem(0, a, s).unwrap();
    k.run_prog(1, false, |p| assert!(p.storage_get(c, s, None, F_CREATE).is_some()));
    assert_eq!(k.socket_charge(s).unwrap(), full);
    k.socket_close(0, s).unwrap();
    clean(&k);
}

// ----- socket clone (§2.12) ----------------------------------------------------------------------

#[test]
fn accept_copies_exactly_the_clone_maps_and_charges_the_child_for_them() {
    let k = Kernel::builder().optmem_max(1 << 16).build();
    let sizes = [8, 16, 24];
    let cloned: Vec<i32> = sizes
        .iter()
        .map(|&n| k.map_create(MapType::Sk, MapAttr::new(n).with_flags(clone_flags())).unwrap())
        .collect();
    let plain: Vec<i32> =
        [8, 40].iter().map(|&n| k.map_create(MapType::Sk, MapAttr::new(n)).unwrap()).collect();
    let (_, listener) = k.socket_create();
    // Interleave clone and non-clone elements on the parent's list.
    for (i, (&m, &n)) in cloned.iter().zip(&sizes).enumerate() {
        k.map_update_elem(0, m, listener, &vec![i as u8 + 1; n as usize], BPF_ANY).unwrap();
        if let Some(&p) = plain.get(i) {
            let n = if i == 0 { 8 } else { 40 };
            k.map_update_elem(0, p, listener, &vec![0x70 + i as u8; n], BPF_ANY).unwrap();
        }
    }
    let parent_charge = k.socket_charge(listener).unwrap();
    let (_, child) = k.socket_accept(1, listener).unwrap();
    for (i, (&m, &n)) in cloned.iter().zip(&sizes).enumerate() {
        assert_eq!(k.map_lookup_elem(0, m, child).unwrap(), vec![i as u8 + 1; n as usize]);
    }
    for &p in &plain {
        assert_eq!(k.map_lookup_elem(0, p, child).errno(), Err(Errno::ENOENT), "not cloned");
    }
    let cost: u64 = storage_size() + sizes.iter().map(|&n| elem_size(n)).sum::<u64>();
    assert_eq!(k.socket_charge(child).unwrap(), cost, "the child pays for its copies");
    assert_eq!(k.socket_charge(listener).unwrap(), parent_charge, "the parent is unchanged");
    // Copies, not shares.
    k.map_update_elem(0, cloned[0], child, &[0xee; 8], BPF_EXIST).unwrap();
    assert_eq!(k.map_lookup_elem(0, cloned[0], listener).unwrap(), vec![1; 8]);
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    // A parent with only non-clone elements, or none, gives a child without storage.
    let (_, bare) = k.socket_create();
    k.map_update_elem(0, plain[0], bare, &[1; 8], BPF_ANY).unwrap();
    let (_, child2) = k.socket_accept(0, bare).unwrap();
    assert_eq!(k.socket_charge(child2).unwrap(), 0);
    let (_, empty) = k.socket_create();
    let (_, child3) = k.socket_accept(0, empty).unwrap();
    assert_eq!(k.socket_charge(child3).unwrap(), 0);
    // accept needs a live socket and a CPU.
    let (_, pidfd) = k.task_spawn();
    assert_error(&k.socket_accept(0, pidfd).unwrap_err(), Errno::EBADF, &["is not a socket fd"]);
    assert_eq!(k.socket_accept(7, listener).errno(), Err(Errno::EINVAL));
    k.socket_close(0, listener).unwrap();
    assert_eq!(k.map_lookup_elem(0, cloned[1], child).unwrap(), vec![2; 16], "outlives parent");
    for fd in [child, bare, child2, empty, child3] {
        k.socket_close(1, fd).unwrap();
    }
    assert_eq!(live_storages(&k, MapType::Sk), 0);
    clean(&k);
}

#[test]
fn accept_skips_a_clone_map_whose_last_fd_was_closed() {
    let k = Kernel::builder().optmem_max(1 << 16).build();
    let doomed = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone_flags())).unwrap();
    let kept = k.map_create(MapType::Sk, MapAttr::new(16).with_flags(clone_flags())).unwrap();
    let second_fd = k.dup(doomed).unwrap();
    let (_, listener) = k.socket_create();
    k.map_update_elem(0, doomed, listener, &[1; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, kept, listener, &[2; 16], BPF_ANY).unwrap();
    // One fd of two closed: the map lives and is cloned.
    k.close(0, doomed).unwrap();
    let (_, before) = k.socket_accept(1, listener).unwrap();
    assert_eq!(k.map_lookup_elem(0, second_fd, before).unwrap(), vec![1; 8]);
    assert_eq!(k.socket_charge(before).unwrap(), storage_size() + elem_size(8) + elem_size(16));
    // The last fd closed: map_free took the map's elements off every socket, and a later
    // clone copies only the live clone map.
    k.close(1, second_fd).unwrap();
    assert_eq!(k.socket_charge(before).unwrap(), storage_size() + elem_size(16));
    assert_eq!(k.socket_charge(listener).unwrap(), storage_size() + elem_size(16));
    let (_, after) = k.socket_accept(0, listener).unwrap();
    assert_eq!(k.socket_charge(after).unwrap(), storage_size() + elem_size(16));
    assert_eq!(k.map_lookup_elem(0, kept, after).unwrap(), vec![2; 16]);
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    for fd in [listener, before, after] {
        k.socket_close(0, fd).unwrap();
    }
    clean(&k);
}

/// Runs `action` once, at the first probe event at `site` after it is armed, with the kernel
/// and the event's CPU: a program (or syscall) nested inside the storage code.
struct AtProbe {
    site: &'static str,
    kernel: OnceLock<Weak<Kernel>>,
    action: Mutex<Option<Action>>,
}

type Action = Box<dyn FnOnce(&Kernel, u32) + Send>;

impl AtProbe {
    /// A kernel whose storage probe points reach a new `AtProbe` at `site`.
    fn kernel(site: &'static str, optmem_max: u64) -> (Arc<AtProbe>, Arc<Kernel>) {
        let hook = Arc::new(AtProbe { site, kernel: OnceLock::new(), action: Mutex::new(None) });
        let k = Arc::new(
            Kernel::builder()
                .optmem_max(optmem_max)
                .probes(Probes::with_hook(hook.clone()))
                .build(),
        );
        let _ = hook.kernel.set(Arc::downgrade(&k));
        (hook, k)
    }

    fn arm(&self, action: impl FnOnce(&Kernel, u32) + Send + 'static) {
        *self.action.lock().unwrap() = Some(Box::new(action));
    }

    fn fired(&self) -> bool {
        self.action.lock().unwrap().is_none()
    }
}

impl ProbeHook for AtProbe {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        if e.site != self.site {
            return Verdict::Continue;
        }
        // Taken out before it runs: what it does passes probe points too.
        let Some(action) = self.action.lock().unwrap().take() else {
            return Verdict::Continue;
        };
        if let Some(k) = self.kernel.get().and_then(Weak::upgrade) {
            action(&k, e.cpu.unwrap_or(0));
        }
        Verdict::Continue
    }
}

/// §2.12 step 3: the clone takes `bpf_map_inc_not_zero`, so a map whose last reference is
/// gone is skipped even while `map_free` has not yet unlinked its elements.
#[test]
fn accept_skips_a_clone_map_that_is_being_freed() {
    let (hook, k) = AtProbe::kernel("bucket_lock_acquire", 1 << 16);
    let dying = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone_flags())).unwrap();
    let kept = k.map_create(MapType::Sk, MapAttr::new(16).with_flags(clone_flags())).unwrap();
    let (_, listener) = k.socket_create();
    k.map_update_elem(0, dying, listener, &[1; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, kept, listener, &[2; 16], BPF_ANY).unwrap();
    // The accept runs on CPU 1 when map_free (the last close, on CPU 0) is about to unlink the
    // first element of the dying map: the map's refcount is already 0.
    let seen = Arc::new(Mutex::new(None));
    let out = seen.clone();
    hook.arm(move |k, cpu| {
        assert_eq!(cpu, 0);
        let (_, child) = k.socket_accept(1, listener).unwrap();
        *out.lock().unwrap() = Some((child, k.socket_charge(child).unwrap()));
    });
    k.close(0, dying).unwrap();
    assert!(hook.fired());
    let (child, charge) = seen.lock().unwrap().expect("accepted inside map_free");
    assert_eq!(charge, storage_size() + elem_size(16), "only the live clone map was copied");
    assert_eq!(k.map_lookup_elem(0, kept, child).unwrap(), vec![2; 16]);
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    k.socket_close(0, listener).unwrap();
    k.socket_close(0, child).unwrap();
    clean(&k);
}

// ----- syscalls (§2.11) --------------------------------------------------------------------------

#[test]
fn syscall_keys_are_the_owner_kinds_own_fds() {
    for ty in ALL {
        let k = Kernel::builder().build();
        let map = k.map_create(ty, MapAttr::new(8)).unwrap();
        let (id, fd) = spawn(&k, ty);
        // The right kind of fd names the owner.
        k.map_update_elem(0, map, fd, &[1; 8], BPF_NOEXIST).unwrap();
        assert_eq!(k.map_lookup_elem(1, map, fd).unwrap(), vec![1; 8]);
        // Every other kind of fd, a map fd, and fds that are not open: -EBADF.
        let others: Vec<(MapType, i32)> =
            ALL.iter().filter(|&&t| t != ty).map(|&t| (t, spawn(&k, t).1)).collect();
        let other_map = k.map_create(other(ty), MapAttr::new(8)).unwrap();
        let not_kind = |bad: i32| format!("fd {bad} is not {}", key_name(ty));
        for bad in others.iter().map(|o| o.1).chain([map, other_map]) {
            let want = not_kind(bad);
            let e = k.map_lookup_elem(0, map, bad).unwrap_err();
            assert_error(&e, Errno::EBADF, &[&want]);
            let e = k.map_update_elem(0, map, bad, &[2; 8], BPF_ANY).unwrap_err();
            assert_error(&e, Errno::EBADF, &[&want]);
            assert_error(&k.map_delete_elem(0, map, bad).unwrap_err(), Errno::EBADF, &[&want]);
        }
        for bad in [-1, 4242] {
            let want = format!("fd {bad} is not open");
            assert_error(&k.map_lookup_elem(0, map, bad).unwrap_err(), Errno::EBADF, &[&want]);
            let e = k.map_update_elem(0, map, bad, &[2; 8], BPF_ANY).unwrap_err();
            assert_error(&e, Errno::EBADF, &[&want]);
            assert_error(&k.map_delete_elem(0, map, bad).unwrap_err(), Errno::EBADF, &[&want]);
        }
        // An owner's fd where the map fd goes: -EINVAL, naming the owner.
        let who = format!("fd {fd} is not a map ({} {id})", owner_name(ty));
        assert_error(&k.map_lookup_elem(0, fd, fd).unwrap_err(), Errno::EINVAL, &[&who]);
        let e = k.map_update_elem(0, fd, fd, &[2; 8], BPF_ANY).unwrap_err();
        assert_error(&e, Errno::EINVAL, &[&who]);
        assert_error(&k.map_delete_elem(0, fd, fd).unwrap_err(), Errno::EINVAL, &[&who]);
        assert_error(&k.map_get_next_key(fd).unwrap_err(), Errno::EINVAL, &[&who]);
        // Nothing changed.
        assert_eq!(k.map_lookup_elem(1, map, fd).unwrap(), vec![1; 8]);
        assert_eq!(k.check_invariants(), Vec::<String>::new());
        // A closed map fd, then a closed key fd: -EBADF.
        let dup = k.dup(map).unwrap();
        k.close(0, dup).unwrap();
        let e = k.map_lookup_elem(0, dup, fd).unwrap_err();
        assert_error(&e, Errno::EBADF, &[&format!("fd {dup} is not open")]);
        let key = k.dup(fd).unwrap();
        assert_eq!(k.map_lookup_elem(0, map, key).unwrap(), vec![1; 8], "a dup names it too");
        k.close(1, key).unwrap();
        let e = k.map_update_elem(0, map, key, &[3; 8], BPF_ANY).unwrap_err();
        assert_error(&e, Errno::EBADF, &[&format!("fd {key} is not open")]);
        k.map_delete_elem(0, map, fd).unwrap();
        for (t, o) in others {
            end(&k, 0, t, o).unwrap();
        }
        end(&k, 0, ty, fd).unwrap();
        clean(&k);
    }
}

#[test]
fn get_next_key_is_not_supported_by_any_map_type() {
    let k = Kernel::builder().build();
    for ty in ALL {
        let map = k.map_create(ty, MapAttr::new(8)).unwrap();
        let (_, o) = spawn(&k, ty);
        k.map_update_elem(0, map, o, &[1; 8], BPF_ANY).unwrap();
        let e = k.map_get_next_key(map).unwrap_err();
        assert_error(
            &e,
            Errno::ENOTSUPP,
            &[&format!("map fd {map}: local-storage maps cannot be iterated by key")],
        );
        assert_eq!(e.errno().negated(), -524);
        k.close(0, map).unwrap();
        assert_eq!(k.map_get_next_key(map).errno(), Err(Errno::EBADF));
        end(&k, 0, ty, o).unwrap();
    }
    clean(&k);
}

#[test]
fn update_flags_are_checked_as_the_core_checks_them() {
    for ty in ALL {
        let k = Kernel::builder().optmem_max(1 << 16).build();
        let map = k.map_create(ty, MapAttr::new(8)).unwrap();
        let (id, o) = spawn(&k, ty);
        let who = format!("{} {id}", owner_name(ty));
        let bad_flags = format!("bad flags or value size for map fd {map} (owner {who})");
        // Absent.
        let e = k.map_update_elem(0, map, o, &[1; 8], BPF_EXIST).unwrap_err();
        assert_error(&e, Errno::ENOENT, &[&format!("no element for {who} in map fd {map}")]);
        for flags in [BPF_NOEXIST | BPF_EXIST, 8, 16, 1 << 32, BPF_F_LOCK, BPF_F_LOCK | BPF_EXIST] {
            let e = k.map_update_elem(0, map, o, &[1; 8], flags).unwrap_err();
            assert_error(&e, Errno::EINVAL, &[&bad_flags]);
        }
        assert_eq!(k.map_lookup_elem(0, map, o).errno(), Err(Errno::ENOENT), "{ty:?}");
        // BPF_NOEXIST creates, then refuses; BPF_EXIST and BPF_ANY replace.
        k.map_update_elem(0, map, o, &[1; 8], BPF_NOEXIST).unwrap();
        let e = k.map_update_elem(1, map, o, &[2; 8], BPF_NOEXIST).unwrap_err();
        assert_error(
            &e,
            Errno::EEXIST,
            &[&format!("map fd {map} already has an element for {who}")],
        );
        assert_eq!(k.map_lookup_elem(0, map, o).unwrap(), vec![1; 8]);
        k.map_update_elem(1, map, o, &[3; 8], BPF_EXIST).unwrap();
        assert_eq!(k.map_lookup_elem(0, map, o).unwrap(), vec![3; 8]);
        k.map_update_elem(0, map, o, &[4; 8], BPF_ANY).unwrap();
        assert_eq!(k.map_lookup_elem(0, map, o).unwrap(), vec![4; 8]);
        // Present: the flag checks come first still.
        for flags in [BPF_NOEXIST | BPF_EXIST, 8, BPF_F_LOCK | BPF_ANY] {
            let e = k.map_update_elem(0, map, o, &[5; 8], flags).unwrap_err();
            assert_error(&e, Errno::EINVAL, &[&bad_flags]);
        }
        assert_eq!(k.map_lookup_elem(0, map, o).unwrap(), vec![4; 8]);
        // BPF_F_LOCK on a value with a spin lock.
        let locked = k.map_create(ty, spin_lock_attr(8)).unwrap();
        assert_eq!(
            k.map_update_elem(0, locked, o, &[1; 8], BPF_F_LOCK | BPF_EXIST).errno(),
            Err(Errno::ENOENT)
        );
        k.map_update_elem(0, locked, o, &[1; 8], BPF_F_LOCK | BPF_ANY).unwrap();
        assert_eq!(
            k.map_update_elem(0, locked, o, &[2; 8], BPF_F_LOCK | BPF_NOEXIST).errno(),
            Err(Errno::EEXIST)
        );
        k.map_update_elem(1, locked, o, &[3; 8], BPF_F_LOCK | BPF_EXIST).unwrap();
        assert_eq!(k.map_lookup_elem(0, locked, o).unwrap(), vec![3; 8]);
        k.map_update_elem(1, locked, o, &[4; 8], BPF_F_LOCK).unwrap();
        assert_eq!(k.map_lookup_elem(0, locked, o).unwrap(), vec![4; 8]);
        assert_eq!(
            k.map_update_elem(0, locked, o, &[5; 8], BPF_F_LOCK | BPF_NOEXIST | BPF_EXIST).errno(),
            Err(Errno::EINVAL)
        );
        assert_eq!(k.map_lookup_elem(0, locked, o).unwrap(), vec![4; 8]);
        if ty == MapType::Sk {
            assert_eq!(k.socket_charge(o).unwrap(), storage_size() + 2 * elem_size(8));
        }
        assert_eq!(k.check_invariants(), Vec::<String>::new(), "{ty:?}");
        end(&k, 0, ty, o).unwrap();
        clean(&k);
    }
}

// ----- map creation (§2.1) -----------------------------------------------------------------------

#[test]
fn map_create_refuses_each_bad_attribute_and_names_it() {
    let base = MapAttr::new(8);
    let cases: Vec<(&str, MapAttr, Errno, &str)> = vec![
        ("no BPF_F_NO_PREALLOC", base.with_flags(0), Errno::EINVAL, "lacks BPF_F_NO_PREALLOC"),
        (
            "clone without BPF_F_NO_PREALLOC",
            base.with_flags(MapFlags::CLONE.bits()),
            Errno::EINVAL,
            "lacks BPF_F_NO_PREALLOC",
        ),
        (
            "unknown flag",
            base.with_flags(MapFlags::NO_PREALLOC.bits() | 1 << 3),
            Errno::EINVAL,
            "map_flags 0x9",
        ),
        ("max_entries", MapAttr { max_entries: 1, ..base }, Errno::EINVAL, "max_entries 1"),
        ("key_size", MapAttr { key_size: 8, ..base }, Errno::EINVAL, "key_size 8"),
        ("value_size 0", MapAttr::new(0), Errno::EINVAL, "value_size is 0"),
        (
            "value too big",
            MapAttr::new(MAX_VALUE_SIZE + 1),
            Errno::E2BIG,
            "value_size 65408 is above the limit 65407",
        ),
        (
            "EINVAL before E2BIG",
            MapAttr { key_size: 2, ..MapAttr::new(MAX_VALUE_SIZE + 1) },
            Errno::EINVAL,
            "key_size 2",
        ),
        (
            "no BTF key id",
            MapAttr { btf_key_type_id: 0, ..base },
            Errno::EINVAL,
            "BTF key and value type ids",
        ),
        (
            "no BTF value id",
            MapAttr { btf_value_type_id: 0, ..base },
            Errno::EINVAL,
            "BTF key and value type ids",
        ),
        (
            "BTF key not a 4-byte int",
            MapAttr { btf_key_type_id: btf::LONG, ..base },
            Errno::EINVAL,
            "BTF key type id 2",
        ),
        (
            "BTF key a char array",
            MapAttr { btf_key_type_id: btf::char_array(4), ..base },
            Errno::EINVAL,
            "is not a 4-byte int",
        ),
        (
            "unknown BTF key id",
            MapAttr { btf_key_type_id: 3, ..base },
            Errno::EINVAL,
            "BTF key type id 3",
        ),
        (
            "BTF value of another size",
            MapAttr { btf_value_type_id: btf::char_array(16), ..base },
            Errno::EINVAL,
            "BTF value type id 65552",
        ),
        (
            "BTF value int for 8 bytes",
            MapAttr { btf_value_type_id: btf::INT, ..base },
            Errno::EINVAL,
            "does not have value_size 8 bytes",
        ),
        (
            "unknown BTF value id",
            MapAttr { btf_value_type_id: 3, ..base },
            Errno::EINVAL,
            "BTF value type id 3",
        ),
    ];
    let k = Kernel::builder().build();
    for ty in ALL {
        for (what, attr, errno, names) in &cases {
            let e = k.map_create(ty, *attr).unwrap_err();
            assert_eq!(e.errno(), *errno, "{ty:?}, {what}: {e}");
            assert_error(&e, *errno, &["map_create: ", names]);
        }
        assert_eq!(k.storage(ty).cache_idx_counts().iter().sum::<u64>(), 0, "no map was made");
        // Accepted: BPF_F_CLONE on every type (only sockets act on it), any value type of
        // value_size bytes. (Not the largest value: the simulated slab allocates its slots
        // up front, some 270 MB for one such map.)
        let clone = k.map_create(ty, base.with_flags(clone_flags())).unwrap();
        let long = k.map_create(ty, MapAttr { btf_value_type_id: btf::LONG, ..base }).unwrap();
        let (_, o) = spawn(&k, ty);
        k.map_update_elem(0, clone, o, &[1; 8], BPF_ANY).unwrap();
        k.map_update_elem(0, long, o, &[2; 8], BPF_ANY).unwrap();
        assert_eq!(k.storage(ty).cache_idx_counts().iter().sum::<u64>(), 2);
        for m in [clone, long] {
            k.close(0, m).unwrap();
        }
        end(&k, 0, ty, o).unwrap();
    }
    // uptr fields: task storage only.
    let uptr = MapAttr::new(8).with_layout(ValueLayout { uptrs: 1, ..ValueLayout::default() });
    for ty in [MapType::Sk, MapType::Inode, MapType::Cgrp] {
        let e = k.map_create(ty, uptr).unwrap_err();
        assert_error(&e, Errno::EOPNOTSUPP, &["map_create: uptr fields are for task storage only"]);
    }
    let m = k.map_create(MapType::Task, uptr).unwrap();
    k.close(0, m).unwrap();
    clean(&k);
}

// ----- contexts (§2.11) --------------------------------------------------------------------------

#[test]
fn sk_tracing_helpers_refuse_hardirq_and_nmi_and_nothing_else_does() {
    let k = Kernel::builder().build();
    let sk_map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let (_, s) = k.socket_create();
    k.map_update_elem(0, sk_map, s, &[3; 8], BPF_ANY).unwrap();
    let (_, s2) = k.socket_create();
    let tracing = ProgSpec::new(ProgType::Tracing);
    for ctx in [Context::Hardirq, Context::Nmi] {
        k.run(1, tracing.in_context(ctx), |p| {
            assert!(p.storage_get(sk_map, s, None, 0).is_none(), "{ctx:?}: even a hit");
            assert!(p.storage_get(sk_map, s2, None, F_CREATE).is_none(), "{ctx:?}: no create");
            for fd in [s, s2, -1] {
                let e = p.storage_delete(sk_map, fd).unwrap_err();
                let what = format!("bpf_sk_storage_delete_tracing on fd {fd} in map fd {sk_map}");
                assert_error(&e, Errno::EPERM, &[&what, &format!("{ctx:?} context")]);
            }
        })
        .unwrap();
    }
    assert_eq!(k.map_lookup_elem(0, sk_map, s).unwrap(), vec![3; 8], "not deleted");
    assert_eq!(k.map_lookup_elem(0, sk_map, s2).errno(), Err(Errno::ENOENT), "not created");
    // The tracing variant in task and softirq context, and the plain one anywhere, work.
    for spec in [
        tracing,
        tracing.in_context(Context::Softirq),
        ProgSpec::new(ProgType::Lsm).in_context(Context::Hardirq),
        ProgSpec::new(ProgType::Iter).in_context(Context::Nmi),
    ] {
        k.run(0, spec, |p| {
            assert_eq!(p.storage_get(sk_map, s, None, 0).unwrap().read("p").unwrap(), [3; 8]);
            assert!(p.storage_get(sk_map, s2, None, F_CREATE).is_some(), "{spec:?}");
            assert_eq!(p.storage_delete(sk_map, s2), Ok(()), "{spec:?}");
        })
        .unwrap();
    }
    // The other types have no context rule: tracing programs in hardirq / NMI use them.
    for ty in [MapType::Task, MapType::Inode, MapType::Cgrp] {
        let map = k.map_create(ty, MapAttr::new(8)).unwrap();
        let (_, o) = spawn(&k, ty);
        for ctx in [Context::Hardirq, Context::Nmi] {
            k.run(1, tracing.in_context(ctx), |p| {
                assert!(p.storage_get(map, o, None, F_CREATE).is_some(), "{ty:?} {ctx:?}");
                assert_eq!(p.storage_delete(map, o), Ok(()), "{ty:?} {ctx:?}");
            })
            .unwrap();
        }
        end(&k, 0, ty, o).unwrap();
    }
    k.socket_close(0, s).unwrap();
    k.socket_close(0, s2).unwrap();
    clean(&k);
}

#[test]
fn sleepable_programs_run_in_task_context_only() {
    let k = Kernel::builder().build();
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, t) = k.task_spawn();
    for ty in [ProgType::Lsm, ProgType::Syscall, ProgType::Tracing, ProgType::Iter] {
        for ctx in [Context::Softirq, Context::Hardirq, Context::Nmi] {
            let mut ran = false;
            let e = k.run(0, ProgSpec::new(ty).sleepable().in_context(ctx), |_| ran = true);
            assert_error(
                &e.unwrap_err(),
                Errno::EINVAL,
                &[&format!("a sleepable program cannot run in {ctx:?} context")],
            );
            assert!(!ran, "the program did not run");
        }
        let got = k.run(1, ProgSpec::new(ty).sleepable(), |p| {
            p.storage_get(map, t, None, F_CREATE).map(|v| v.read("p").unwrap())
        });
        assert_eq!(got.unwrap(), Some(vec![0; 8]), "{ty:?}");
    }
    k.task_exit(0, t).unwrap();
    clean(&k);
}

#[test]
fn a_cpu_out_of_range_is_einval_everywhere() {
    let k = Kernel::builder().cpus(2).build();
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, t) = k.task_spawn();
    let (_, s) = k.socket_create();
    let (_, cg) = k.cgroup_mkdir();
    let (_, ino) = k.inode_create();
    k.map_update_elem(0, map, t, &[1; 8], BPF_ANY).unwrap();
    for cpu in [2, 3, u32::MAX] {
        let want = format!("CPU {cpu} does not exist (2 CPUs)");
        let results = [
            k.map_lookup_elem(cpu, map, t).map(drop),
            k.map_update_elem(cpu, map, t, &[2; 8], BPF_ANY),
            k.map_delete_elem(cpu, map, t),
            k.run(cpu, ProgSpec::new(ProgType::Lsm), |_| ()),
            k.run(cpu, ProgSpec::new(ProgType::Tracing).in_context(Context::Nmi), |_| ()),
            k.close(cpu, map),
            k.task_exit(cpu, t),
            k.socket_close(cpu, s),
            k.socket_accept(cpu, s).map(drop),
            k.inode_evict(cpu, ino),
            k.cgroup_rmdir(cpu, cg),
        ];
        for r in results {
            assert_error(&r.unwrap_err(), Errno::EINVAL, &[&want]);
        }
    }
    // Nothing happened: the map is open, the element unchanged, every owner alive.
    assert_eq!(k.map_lookup_elem(1, map, t).unwrap(), vec![1; 8]);
    k.task_exit(1, t).unwrap();
    k.socket_close(1, s).unwrap();
    k.inode_evict(1, ino).unwrap();
    k.cgroup_rmdir(1, cg).unwrap();
    clean(&k);
}

// ----- the recursion guard (§2.11, V-MA) ---------------------------------------------------------

#[test]
fn task_helpers_nested_in_a_syscall_plain_versus_recur() {
    // The syscall lookup holds the task counter on CPU 0 and caches its hit: a program
    // nested there (a tracing program on `lookup_cache_insert`) meets the held counter.
    let (hook, k) = AtProbe::kernel("lookup_cache_insert", 1 << 16);
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let sk_map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let cg_map = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    let (_, outer) = k.task_spawn();
    let (pid, absent) = k.task_spawn();
    let (_, sock) = k.socket_create();
    let (_, cg) = k.cgroup_mkdir();
    k.map_update_elem(0, map, outer, &[1; 8], BPF_ANY).unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = log.clone();
    hook.arm(move |k, cpu| {
        let mut log = out.lock().unwrap();
        k.run(cpu, ProgSpec::new(ProgType::Tracing), |p| {
            // `_recur`: no create while busy; delete looks first, so absent is -ENOENT.
            log.push(format!(
                "recur get: {}",
                p.storage_get(map, absent, None, F_CREATE).is_some()
            ));
            let e = p.storage_delete(map, absent).unwrap_err();
            log.push(e.to_string());
            // The other types' guards are their own (cgroup) or absent (socket).
            log.push(format!("cgrp: {}", p.storage_get(cg_map, cg, None, F_CREATE).is_some()));
            log.push(format!("sk: {}", p.storage_get(sk_map, sock, None, F_CREATE).is_some()));
            log.push(format!("cgrp delete: {:?}", p.storage_delete(cg_map, cg).errno()));
            log.push(format!("sk delete: {:?}", p.storage_delete(sk_map, sock).errno()));
        })
        .unwrap();
        // The plain helpers take the counter unconditionally: full behaviour.
        k.run(cpu, ProgSpec::new(ProgType::Lsm), |p| {
            log.push(format!(
                "plain get: {}",
                p.storage_get(map, absent, None, F_CREATE).is_some()
            ));
            log.push(format!("plain delete: {:?}", p.storage_delete(map, absent).errno()));
        })
        .unwrap();
        // The guard is per CPU: the other CPU's `_recur` helpers are not refused.
        k.run(cpu ^ 1, ProgSpec::new(ProgType::Tracing), |p| {
            log.push(format!(
                "other cpu: {}",
                p.storage_get(map, absent, None, F_CREATE).is_some()
            ));
            log.push(format!("other cpu delete: {:?}", p.storage_delete(map, absent).errno()));
        })
        .unwrap();
    });
    assert_eq!(k.map_lookup_elem(0, map, outer).unwrap(), vec![1; 8]);
    assert!(hook.fired());
    assert_eq!(
        *log.lock().unwrap(),
        [
            "recur get: false".to_string(),
            format!("ENOENT (2): no element for task {pid} in map fd {map}"),
            "cgrp: true".to_string(),
            "sk: true".to_string(),
            "cgrp delete: Ok(())".to_string(),
            "sk delete: Ok(())".to_string(),
            "plain get: true".to_string(),
            "plain delete: Ok(())".to_string(),
            "other cpu: true".to_string(),
            "other cpu delete: Ok(())".to_string(),
        ]
    );
    // Outside, with the counter released, the `_recur` helpers create and delete.
    assert_eq!(k.map_lookup_elem(0, map, absent).errno(), Err(Errno::ENOENT));
    k.run(0, ProgSpec::new(ProgType::Tracing), |p| {
        assert!(p.storage_get(map, absent, None, F_CREATE).is_some());
        assert_eq!(p.storage_delete(map, absent), Ok(()));
    })
    .unwrap();
    assert_eq!(k.map_lookup_elem(1, map, outer).unwrap(), vec![1; 8]);
    clean(&k);
}

#[test]
fn cgroup_helpers_nested_under_the_cgroup_guard() {
    // An outer cgroup get caches its hit with the cgroup counter held on CPU 0.
    let (hook, k) = AtProbe::kernel("lookup_cache_insert", 1 << 16);
    let map = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    let task_map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, outer) = k.cgroup_mkdir();
    let (absent_id, absent) = k.cgroup_mkdir();
    let (_, present) = k.cgroup_mkdir();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, outer, &[1; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, map, present, &[2; 8], BPF_ANY).unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = log.clone();
    hook.arm(move |k, cpu| {
        let mut log = out.lock().unwrap();
        // cgroup has one proto for every program type: trylock, whatever the type.
        for spec in [ProgSpec::new(ProgType::Lsm), ProgSpec::new(ProgType::Tracing)] {
            k.run(cpu, spec, |p| {
                let hit = p.storage_get(map, present, None, 0).map(|v| v.read("p").unwrap());
                log.push(format!("hit: {hit:?}"));
                log.push(format!(
                    "create: {}",
                    p.storage_get(map, absent, None, F_CREATE).is_some()
                ));
                // -EBUSY before the lookup: absent or present alike.
                log.push(p.storage_delete(map, absent).unwrap_err().to_string());
                log.push(format!("present: {:?}", p.storage_delete(map, present).errno()));
                // The task counter is another counter.
                log.push(format!(
                    "task: {}",
                    p.storage_get(task_map, task, None, F_CREATE).is_some()
                ));
                log.push(format!("task delete: {:?}", p.storage_delete(task_map, task).errno()));
            })
            .unwrap();
        }
        // Per CPU: the other CPU looks, and finds nothing.
        k.run(cpu ^ 1, ProgSpec::new(ProgType::Lsm), |p| {
            log.push(format!("other cpu: {:?}", p.storage_delete(map, absent).errno()));
        })
        .unwrap();
    });
    let got = k.run_prog(0, false, |p| p.storage_get(map, outer, None, 0).map(|v| v.read("p")));
    assert_eq!(got.unwrap().unwrap(), vec![1; 8]);
    assert!(hook.fired());
    let busy = format!(
        "EBUSY (16): the recursion guard is held on CPU 0 (cgroup {absent_id} in map fd {map})"
    );
    let per_spec = [
        format!("hit: {:?}", Some(vec![2u8; 8])),
        "create: false".to_string(),
        busy,
        "present: Err(EBUSY)".to_string(),
        "task: true".to_string(),
        "task delete: Ok(())".to_string(),
    ];
    let mut want: Vec<String> = per_spec.iter().chain(&per_spec).cloned().collect();
    want.push("other cpu: Err(ENOENT)".to_string());
    assert_eq!(*log.lock().unwrap(), want);
    // Nothing was created or deleted; outside the guard both work.
    assert_eq!(k.map_lookup_elem(0, map, present).unwrap(), vec![2; 8]);
    assert_eq!(k.map_lookup_elem(0, map, absent).errno(), Err(Errno::ENOENT));
    k.run_prog(1, false, |p| {
        assert_eq!(p.storage_delete(map, absent).errno(), Err(Errno::ENOENT));
        assert!(p.storage_get(map, absent, None, F_CREATE).is_some());
        assert_eq!(p.storage_delete(map, present), Ok(()));
    });
    assert_eq!(k.check_invariants(), Vec::<String>::new());
    clean(&k);
}

// ----- error messages ----------------------------------------------------------------------------

#[test]
fn every_errno_kind_has_the_kernel_spelling_and_names_what_it_is_about() {
    let k = Kernel::builder().optmem_max(300).build();
    let task_map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let sk_map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let sk_map2 = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let ino_map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    let (pid, pidfd) = k.task_spawn();
    let (sid, sock) = k.socket_create();
    let (ino, inofd) = k.inode_create();
    let msg = |r: Result<(), Error>| r.unwrap_err().to_string();
    assert_eq!(msg(k.close(0, 99)), "EBADF (9): fd 99 is not open");
    assert_eq!(
        msg(k.map_lookup_elem(0, task_map, sock).map(drop)),
        format!("EBADF (9): fd {sock} is not a pidfd")
    );
    assert_eq!(
        msg(k.map_delete_elem(0, pidfd, pidfd)),
        format!("EINVAL (22): fd {pidfd} is not a map (task {pid})")
    );
    assert_eq!(
        msg(k.map_update_elem(0, ino_map, inofd, &[1; 4], BPF_ANY)),
        format!("EINVAL (22): bad flags or value size for map fd {ino_map} (owner inode {ino})")
    );
    assert_eq!(
        msg(k.map_lookup_elem(0, sk_map, sock).map(drop)),
        format!("ENOENT (2): no element for socket {sid} in map fd {sk_map}")
    );
    k.map_update_elem(0, ino_map, inofd, &[1; 8], BPF_ANY).unwrap();
    assert_eq!(
        msg(k.map_update_elem(0, ino_map, inofd, &[1; 8], BPF_NOEXIST)),
        format!("EEXIST (17): map fd {ino_map} already has an element for inode {ino}")
    );
    // 176 + 80 = 256 < 300; another 80 is not.
    k.map_update_elem(0, sk_map, sock, &[1; 8], BPF_ANY).unwrap();
    assert_eq!(
        msg(k.map_update_elem(0, sk_map2, sock, &[1; 8], BPF_ANY)),
        format!(
            "ENOMEM (12): no memory or no charge left for a new element of socket {sid} in map \
             fd {sk_map2}"
        )
    );
    assert_eq!(
        msg(k.map_create(MapType::Inode, MapAttr::new(1 << 16)).map(drop)),
        "E2BIG (7): map_create: value_size 65536 is above the limit 65407"
    );
    let eperm = k
        .run(0, ProgSpec::new(ProgType::Tracing).in_context(Context::Nmi), |p| {
            p.storage_delete(sk_map, sock)
        })
        .unwrap();
    assert_eq!(
        msg(eperm),
        format!(
            "EPERM (1): bpf_sk_storage_delete_tracing on fd {sock} in map fd {sk_map} in Nmi context"
        )
    );
    assert_eq!(
        msg(k.map_get_next_key(task_map)),
        format!("ENOTSUPP (524): map fd {task_map}: local-storage maps cannot be iterated by key")
    );
    let uptr = MapAttr::new(8).with_layout(ValueLayout { uptrs: 1, ..ValueLayout::default() });
    assert_eq!(
        msg(k.map_create(MapType::Inode, uptr).map(drop)),
        "EOPNOTSUPP (95): map_create: uptr fields are for task storage only"
    );
    // (EBUSY: `cgroup_helpers_nested_under_the_cgroup_guard`. EAGAIN needs a lost race.)
    k.task_exit(0, pidfd).unwrap();
    assert_eq!(
        msg(k.map_lookup_elem(0, task_map, pidfd).map(drop)),
        format!("ENOENT (2): task {pid} is gone")
    );
    assert_eq!(msg(k.task_exit(0, pidfd)), format!("ENOENT (2): task {pid} has already ended"));
    clean(&k);
}
