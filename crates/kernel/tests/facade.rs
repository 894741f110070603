//! The facade's front-end rules (§2.11, §2.12, §2.8) on the bpf_ma profile: syscall errno
//! values, map lifetime through fds, owner lifetimes, helpers, and the recursion guard.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{Kernel, MapType, ResultExt};
use bpfls_local_storage::flags::{
    BPF_ANY, BPF_EXIST, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE, BPF_NOEXIST, MapFlags,
};
use bpfls_local_storage::{Errno, MapAttr};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::{Arc, Mutex, OnceLock};

fn clean(k: &Kernel) {
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

#[test]
fn syscalls_return_the_kernels_errors() {
    let k = Kernel::builder().build();
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, pidfd) = k.task_spawn();
    let (_, sock) = k.socket_create();
    assert_eq!(k.map_lookup_elem(0, 999, pidfd).errno(), Err(Errno::EBADF), "no such fd");
    assert_eq!(k.map_lookup_elem(0, pidfd, pidfd).errno(), Err(Errno::EINVAL), "not a map");
    assert_eq!(k.map_lookup_elem(0, map, sock).errno(), Err(Errno::EBADF), "not a pidfd");
    assert_eq!(k.map_lookup_elem(0, map, pidfd).errno(), Err(Errno::ENOENT), "no element");
    assert_eq!(k.map_update_elem(0, map, pidfd, &[1; 8], BPF_EXIST).errno(), Err(Errno::ENOENT));
    k.map_update_elem(0, map, pidfd, &[1; 8], BPF_NOEXIST).unwrap();
    assert_eq!(k.map_update_elem(1, map, pidfd, &[2; 8], BPF_NOEXIST).errno(), Err(Errno::EEXIST));
    assert_eq!(k.map_update_elem(1, map, pidfd, &[2; 4], BPF_ANY).errno(), Err(Errno::EINVAL));
    assert_eq!(k.map_lookup_elem(1, map, pidfd).unwrap(), vec![1; 8]);
    assert_eq!(k.map_get_next_key(map).errno(), Err(Errno::ENOTSUPP));
    k.map_delete_elem(0, map, pidfd).unwrap();
    assert_eq!(k.map_delete_elem(0, map, pidfd).errno(), Err(Errno::ENOENT));
    assert_eq!(
        k.map_create(MapType::Sk, MapAttr::new(8).with_flags(0)).errno(),
        Err(Errno::EINVAL)
    );
    assert_eq!(k.close(0, 12345).errno(), Err(Errno::EBADF));
    k.task_exit(0, pidfd).unwrap();
    clean(&k);
}

#[test]
fn a_map_lives_until_its_last_fd_closes() {
    let k = Kernel::builder().build();
    let map = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    let second = k.dup(map).unwrap();
    let (_, cg) = k.cgroup_mkdir();
    k.map_update_elem(0, map, cg, &[5; 8], BPF_ANY).unwrap();
    k.close(0, map).unwrap();
    assert_eq!(k.map_lookup_elem(0, second, cg).unwrap(), vec![5; 8], "still referenced");
    k.close(0, second).unwrap();
    assert_eq!(k.storage(MapType::Cgrp).cache_idx_counts().iter().sum::<u64>(), 0, "map freed");
    k.cgroup_rmdir(0, cg).unwrap();
    clean(&k);
}

#[test]
fn socket_charges_return_to_zero_and_accept_clones_clone_maps() {
    let k = Kernel::builder().optmem_max(1 << 16).build();
    let clone_flags = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    let cloned = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone_flags)).unwrap();
    let plain = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let (_, listener) = k.socket_create();
    k.map_update_elem(0, cloned, listener, &[1; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, plain, listener, &[2; 8], BPF_ANY).unwrap();
    k.map_update_elem(0, plain, listener, &[3; 8], BPF_ANY).unwrap(); // replace
    let (_, child) = k.socket_accept(1, listener).unwrap();
    assert_eq!(k.map_lookup_elem(0, cloned, child).unwrap(), vec![1; 8]);
    assert_eq!(k.map_lookup_elem(0, plain, child).errno(), Err(Errno::ENOENT));
    k.socket_close(0, listener).unwrap();
    assert_eq!(k.map_lookup_elem(0, plain, listener).errno(), Err(Errno::EBADF), "fd closed");
    k.socket_close(0, child).unwrap();
    clean(&k);
}

#[test]
fn optmem_limit_refuses_the_element_that_would_exceed_it() {
    // storage 176 + 80 per 8-byte element; 176 + 3 × 80 = 416 < 420 but + 80 is not.
    let k = Kernel::builder().optmem_max(420).build();
    let maps: Vec<i32> =
        (0..4).map(|_| k.map_create(MapType::Sk, MapAttr::new(8)).unwrap()).collect();
    let (_, sock) = k.socket_create();
    for m in &maps[..3] {
        k.map_update_elem(0, *m, sock, &[1; 8], BPF_ANY).unwrap();
    }
    assert_eq!(k.map_update_elem(0, maps[3], sock, &[1; 8], BPF_ANY).errno(), Err(Errno::ENOMEM));
    for m in &maps[..3] {
        assert_eq!(k.map_lookup_elem(0, *m, sock).unwrap(), vec![1; 8], "intact");
    }
    clean(&k);
}

#[test]
fn helpers_create_zeroed_values_and_refuse_bad_input() {
    let k = Kernel::builder().build();
    let map = k.map_create(MapType::Inode, MapAttr::new(16)).unwrap();
    let (_, ino) = k.inode_create();
    k.run_prog(0, false, |p| {
        assert!(p.storage_get(map, ino, None, 0).is_none(), "no element, no F_CREATE");
        assert!(p.storage_get(map, ino, None, 2).is_none(), "unknown flag");
        let s = p.storage_get(map, ino, None, F_CREATE).unwrap();
        assert_eq!(s.read("prog").unwrap(), vec![0; 16]);
        s.write("prog", &[9; 16]).unwrap();
        assert_eq!(p.storage_delete(map, ino), Ok(()));
        assert_eq!(p.storage_delete(map, ino).errno(), Err(Errno::ENOENT));
        // Create, delete and create again inside one program.
        assert!(p.storage_get(map, ino, Some(&[4; 16]), F_CREATE).is_some());
    });
    assert_eq!(k.map_lookup_elem(1, map, ino).unwrap(), vec![4; 16]);
    k.inode_evict(0, ino).unwrap();
    k.run_prog(0, true, |p| {
        assert!(p.storage_get(map, ino, None, F_CREATE).is_none(), "evicted inode");
    });
    clean(&k);
}

/// A tracing program attached inside the task-storage lookup (while the helper holds the busy
/// counter): the kernel's `task_ls_recursion` shape.
#[derive(Default)]
struct Nested {
    kernel: OnceLock<Arc<Kernel>>,
    target: OnceLock<(i32, i32)>,
    results: Mutex<Vec<String>>,
}

impl ProbeHook for Nested {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        if e.site != "lookup_cache_insert" {
            return Verdict::Continue;
        }
        let (Some(k), Some(&(map, task))) = (self.kernel.get(), self.target.get()) else {
            return Verdict::Continue;
        };
        let mut results = self.results.lock().unwrap();
        if !results.is_empty() {
            return Verdict::Continue;
        }
        let cpu = e.cpu.unwrap_or(0);
        k.run_prog_as(cpu, false, true, |p| {
            results.push(format!("get: {}", p.storage_get(map, task, None, F_CREATE).is_some()));
            results.push(format!("delete: {:?}", p.storage_delete(map, task).errno()));
        });
        Verdict::Continue
    }
}

#[test]
fn recursive_helpers_meet_the_busy_counter() {
    let hook = Arc::new(Nested::default());
    let k = Arc::new(Kernel::builder().probes(Probes::with_hook(hook.clone())).build());
    let _ = hook.kernel.set(k.clone());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    let _ = hook.target.set((map, task));
    // The outer program's get caches its hit: the nested `_recur` helpers run with the
    // counter held on this CPU: get finds the element without caching, delete is refused.
    let got = k.run_prog(0, false, |p| p.storage_get(map, task, None, 0).is_some());
    assert!(got);
    assert_eq!(*hook.results.lock().unwrap(), ["get: true", "delete: Err(EBUSY)"]);
    assert_eq!(k.map_lookup_elem(1, map, task).unwrap(), vec![1; 8], "nothing deleted");
    // (The hook holds the kernel and the kernel the hook: a cycle this test leaves to exit.)
    clean(&k);
}

#[test]
fn a_blocked_sleepable_program_keeps_a_deleted_element_alive() {
    use std::sync::mpsc;
    let k = Arc::new(Kernel::builder().build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[6; 8], BPF_ANY).unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let k2 = k.clone();
    let prog = std::thread::spawn(move || {
        k2.run_prog(1, true, |p| {
            let v = p.storage_get(map, task, None, 0).unwrap();
            got_tx.send(()).unwrap();
            go_rx.recv().unwrap(); // blocked mid-section
            v.read("sleepable program after the delete")
        })
    });
    got_rx.recv().unwrap();
    k.map_delete_elem(0, map, task).unwrap();
    // Grace periods the program does not hold may pass meanwhile.
    k.domains().rcu.synchronize();
    go_tx.send(()).unwrap();
    assert_eq!(prog.join().unwrap().unwrap(), vec![6; 8]);
    clean(&k);
}

#[test]
fn a_running_program_keeps_its_maps_past_the_last_close() {
    // The program's used_maps reference: the last fd closes mid-program (from CPU 1), the
    // value stays readable, and the map is freed when the program ends, outside its section.
    let k = Kernel::builder().build();
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[4; 8], BPF_ANY).unwrap();
    let freed_inside = k.run_prog(0, false, |p| {
        let v = p.storage_get(map, task, None, 0).expect("present");
        k.close(1, map).unwrap();
        assert_eq!(v.read("after close").unwrap(), vec![4; 8]);
        assert!(p.storage_get(map, task, None, 0).is_none(), "the fd is gone");
        k.storage(MapType::Task).cache_idx_counts().iter().sum::<u64>() == 0
    });
    assert!(!freed_inside, "not freed while the program runs");
    assert_eq!(k.storage(MapType::Task).cache_idx_counts().iter().sum::<u64>(), 0, "freed after");
    k.task_exit(0, task).unwrap();
    clean(&k);
}
