//! The std backend of the facade: locks exclude, cells hand out pointers, the fence pair and
//! the backoff behave as documented.
#![cfg(not(any(loom, shuttle)))]

use bpfls_sync::alloc::Track;
use bpfls_sync::atomic::{AtomicUsize, Ordering};
use bpfls_sync::{AsymmetricFence, Backoff, Condvar, Mutex, SpinLock, UnsafeCell};
use std::sync::Arc;
use std::thread;

#[test]
fn spin_lock_excludes_and_try_lock_fails_while_held() {
    let lock = Arc::new(SpinLock::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            thread::spawn(move || {
                for _ in 0..10_000 {
                    // A non-atomic read-modify-write: lost updates would show a lost exclusion.
                    let mut g = lock.lock();
                    let v = *g;
                    *g = v + 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let g = lock.lock();
    assert_eq!(*g, 40_000);
    assert!(lock.is_locked());
    assert!(lock.try_lock().is_none());
    drop(g);
    assert!(!lock.is_locked());
    assert_eq!(lock.with(|v| *v), 40_000);
    assert!(format!("{lock:?}").contains("SpinLock"));
}

#[test]
fn mutex_and_condvar_hand_off() {
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let p = pair.clone();
    let t = thread::spawn(move || {
        *p.0.lock() = true;
        p.1.notify_all();
    });
    let mut ready = pair.0.lock();
    while !*ready {
        ready = pair.1.wait(ready);
    }
    drop(ready);
    t.join().unwrap();
    let m = Arc::try_unwrap(pair).unwrap().0;
    assert!(m.into_inner());
}

#[test]
fn mutex_ignores_poisoning() {
    let m = Arc::new(Mutex::new(1));
    let m2 = m.clone();
    let _ = thread::spawn(move || {
        let _g = m2.lock();
        panic!("poison it");
    })
    .join();
    *m.lock() += 1;
    assert_eq!(*m.lock(), 2);
}

#[test]
fn unsafe_cell_with_and_with_mut() {
    let c = UnsafeCell::new(5);
    // SAFETY: no other reference to the cell's contents exists in this test.
    c.with_mut(|p| unsafe { *p += 1 });
    // SAFETY: as above; the write has finished.
    assert_eq!(c.with(|p| unsafe { *p }), 6);
    assert_eq!(c.into_inner(), 6);
}

#[test]
fn fence_pair_runs_in_both_forms() {
    let sym = AsymmetricFence::symmetric();
    assert!(!sym.is_expedited());
    sym.light();
    sym.heavy();
    // membarrier(2) may or may not be available here; both forms must work.
    let asym = AsymmetricFence::new();
    asym.light();
    asym.heavy();
    eprintln!("membarrier expedited: {}", asym.is_expedited());
}

#[test]
fn backoff_counts_polls() {
    let mut b = Backoff::new();
    for _ in 0..100 {
        b.wait();
    }
    assert_eq!(b.polls(), 100);
}

#[test]
fn track_is_transparent_outside_loom() {
    let mut t = Track::new(AtomicUsize::new(1));
    t.get_mut().fetch_add(1, Ordering::Relaxed);
    assert_eq!(t.get_ref().load(Ordering::Relaxed), 2);
    assert_eq!(t.into_inner().into_inner(), 2);
}

#[test]
fn named_threads_carry_their_name() {
    let h = bpfls_sync::thread::spawn_named("bpfls-test".into(), || {
        std::thread::current().name().map(str::to_owned)
    });
    assert_eq!(h.join().unwrap().as_deref(), Some("bpfls-test"));
    const { assert!(!bpfls_sync::MODEL) };
}
