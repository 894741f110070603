//! Property test: random sequences of alloc / free / free_rcu / raw_free / refill work / RCU
//! and Tasks-Trace grace periods / barriers on 3 CPUs, for both `trace_implies_rcu` values and
//! both a fixed unit and the size classes, checked against a model of the live set after every
//! step: no violation, I14 (`check_lists()` empty, `free_cnt` == list length), every live
//! handle live, every freed handle dead (and never handed out again), a `free_rcu`'d object
//! readable until an RCU grace period has been driven, and the charge equal to
//! Σ unit_size × slab outstanding. At the end everything is freed, the domains flushed and the
//! allocator destroyed: no leak, nothing charged, every slab empty (I3).
#![cfg(not(any(loom, shuttle)))]

use bpfls_mem_alloc::{
    Account, AllocError, Bytes, Handle, MemAlloc, MemAllocConfig, MemError, Mutation, SIZE_CLASSES,
    UnitSize, Violations,
};
use bpfls_rcu::{Config, Domains, Step};
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;

const CPUS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Alloc { cpu: u32, size: usize },
    Free { cpu: u32, idx: usize },
    FreeRcu { cpu: u32, idx: usize },
    RawFree { idx: usize },
    RunWork,
    RcuGp,
    TraceGp,
    Barrier,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![1..=248usize, 249..=4088usize];
    prop_oneof![
        6 => (0..CPUS, size).prop_map(|(cpu, size)| Op::Alloc { cpu, size }),
        2 => (0..CPUS, any::<usize>()).prop_map(|(cpu, idx)| Op::Free { cpu, idx }),
        2 => (0..CPUS, any::<usize>()).prop_map(|(cpu, idx)| Op::FreeRcu { cpu, idx }),
        1 => any::<usize>().prop_map(|idx| Op::RawFree { idx }),
        2 => Just(Op::RunWork),
        1 => Just(Op::RcuGp),
        1 => Just(Op::TraceGp),
        1 => Just(Op::Barrier),
    ]
}

struct Model {
    /// Allocated and not freed.
    live: Vec<Handle>,
    /// Freed with `free` or `raw_free`: never live again.
    dead: Vec<Handle>,
    /// Freed with `free_rcu`, and whether an RCU grace period was driven since.
    rcu_freed: Vec<(Handle, bool)>,
    /// Every handle ever handed out.
    seen: HashSet<Handle>,
}

fn run(ops: &[Op], classes: bool, trace_implies_rcu: bool) {
    run_with(ops, classes, trace_implies_rcu, None);
}

fn run_with(ops: &[Op], classes: bool, trace_implies_rcu: bool, mutation: Option<Mutation>) {
    let domains = Arc::new(Domains::new(CPUS, Config::stepped(), trace_implies_rcu));
    let acct = Account::unlimited("memcg");
    let v = Violations::new();
    let (unit, capacity) =
        if classes { (UnitSize::Classes, 256) } else { (UnitSize::Fixed(56), 1024) };
    let mut cfg =
        MemAllocConfig::new("prop", CPUS, unit).with_capacity(capacity).without_work_thread();
    cfg.mutation = mutation;
    let ma: MemAlloc<Bytes> = MemAlloc::new(cfg, domains.clone(), acct.clone(), v.clone()).unwrap();
    let nclasses = if classes { SIZE_CLASSES.len() as u8 } else { 1 };
    let mut m =
        Model { live: Vec::new(), dead: Vec::new(), rcu_freed: Vec::new(), seen: HashSet::new() };

    let check = |m: &Model, step: usize, op: &Op| {
        assert!(v.is_empty(), "step {step} {op:?}: {:?}", v.snapshot());
        assert_eq!(ma.check_lists(), Vec::<String>::new(), "step {step} {op:?}");
        let mut want = 0;
        for c in 0..nclasses {
            want += ma.unit_size(c) as u64 * ma.slab(c).stats().outstanding;
            for cpu in 0..CPUS {
                let s = ma.cache_stats(c, cpu);
                assert_eq!(s.free_cnt, s.free_llist, "step {step}: class {c} cpu {cpu}");
            }
        }
        assert_eq!(acct.charged(), want, "step {step} {op:?}: charge vs outstanding");
        for &h in &m.live {
            assert!(ma.is_live(h), "step {step} {op:?}: live {h} not live");
        }
        for &h in &m.dead {
            assert!(!ma.is_live(h), "step {step} {op:?}: freed {h} still live");
        }
        for &(h, gp) in &m.rcu_freed {
            assert!(gp || ma.is_live(h), "step {step} {op:?}: {h} reusable before an RCU GP");
        }
        // Checking never reports.
        assert!(v.is_empty());
    };

    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Alloc { cpu, size } => {
                let r = if classes { ma.alloc_size(cpu, size) } else { ma.alloc(cpu) };
                match r {
                    Ok(h) => {
                        assert!(m.seen.insert(h), "step {step}: {h} handed out twice");
                        if classes {
                            assert!(size + 8 <= ma.unit_size(h.class()));
                            assert_eq!(
                                Some(h.class() as usize),
                                bpfls_mem_alloc::size_class(size + 8)
                            );
                        }
                        m.live.push(h);
                    }
                    Err(MemError::Alloc(AllocError::Empty)) => {}
                    Err(e) => panic!("step {step}: alloc failed: {e}"),
                }
            }
            Op::Free { cpu, idx } if !m.live.is_empty() => {
                let h = m.live.swap_remove(idx % m.live.len());
                ma.free(cpu, h).unwrap();
                m.dead.push(h);
            }
            Op::FreeRcu { cpu, idx } if !m.live.is_empty() => {
                let h = m.live.swap_remove(idx % m.live.len());
                ma.free_rcu(cpu, h).unwrap();
                assert!(ma.is_live(h), "step {step}: free_rcu'd {h} must stay readable");
                m.rcu_freed.push((h, false));
            }
            Op::RawFree { idx } if !m.live.is_empty() => {
                let h = m.live.swap_remove(idx % m.live.len());
                ma.raw_free(h).unwrap();
                m.dead.push(h);
            }
            Op::Free { .. } | Op::FreeRcu { .. } | Op::RawFree { .. } => {}
            Op::RunWork => {
                ma.run_work();
            }
            Op::RcuGp => {
                assert_eq!(domains.rcu.advance_until_quiet(), Step::Idle);
                m.rcu_freed.iter_mut().for_each(|e| e.1 = true);
            }
            Op::TraceGp => {
                assert_eq!(domains.tasks_trace.advance_until_quiet(), Step::Idle);
            }
            Op::Barrier => {
                domains.barrier_all();
                m.rcu_freed.iter_mut().for_each(|e| e.1 = true);
            }
        }
        check(&m, step, op);
    }

    // Teardown: free everything live, flush the work and both domains, destroy.
    for (i, h) in std::mem::take(&mut m.live).into_iter().enumerate() {
        let cpu = i as u32 % CPUS;
        match i % 3 {
            0 => ma.free(cpu, h).unwrap(),
            1 => ma.free_rcu(cpu, h).unwrap(),
            _ => ma.raw_free(h).unwrap(),
        }
    }
    ma.run_all_work();
    domains.rcu.barrier();
    domains.barrier_all();
    assert!(ma.check_lists().is_empty(), "{:?}", ma.check_lists());
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 0, "{:?}", v.snapshot());
    assert!(v.is_empty(), "{:?}", v.snapshot());
    assert_eq!(acct.charged(), 0);
    for c in 0..nclasses {
        assert_eq!(ma.slab(c).stats().outstanding, 0, "class {c}");
    }
    assert_eq!(domains.rcu.stats().cbs_pending, 0);
    assert_eq!(domains.tasks_trace.stats().cbs_pending, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fixed_unit_trace_implies_rcu(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, false, true);
    }

    #[test]
    fn fixed_unit_chained_rcu(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, false, false);
    }

    #[test]
    fn size_classes_trace_implies_rcu(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, true, true);
    }

    #[test]
    fn size_classes_chained_rcu(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, true, false);
    }
}

/// A fixed long sequence (no shrinking needed) that crosses both watermarks on every CPU.
#[test]
fn long_deterministic_sequence() {
    let mut ops = Vec::new();
    for round in 0..4u32 {
        for i in 0..150usize {
            ops.push(Op::Alloc { cpu: round % CPUS, size: 1 + i * 27 % 4088 });
            if i % 7 == 0 {
                ops.push(Op::RunWork);
            }
        }
        for i in 0..150usize {
            ops.push(match i % 4 {
                0 => Op::Free { cpu: (round + 1) % CPUS, idx: i * 31 },
                1 => Op::FreeRcu { cpu: round % CPUS, idx: i },
                2 => Op::RawFree { idx: i * 7 },
                _ => Op::Free { cpu: (round + 2) % CPUS, idx: 0 },
            });
            if i % 10 == 0 {
                ops.push(Op::RunWork);
            }
        }
        ops.extend([Op::RunWork, Op::RunWork, Op::RcuGp, Op::TraceGp, Op::RcuGp, Op::Barrier]);
    }
    for classes in [false, true] {
        for tir in [true, false] {
            run(&ops, classes, tir);
        }
    }
}

/// The model can fail: with `free_rcu` turned into an immediate free, the first `free_rcu`
/// trips the "readable until an RCU GP" check.
#[test]
fn the_model_catches_the_free_rcu_mutation() {
    let ops = [Op::Alloc { cpu: 0, size: 8 }, Op::FreeRcu { cpu: 1, idx: 0 }];
    run(&ops, false, true);
    let err = std::panic::catch_unwind(|| {
        run_with(&ops, false, true, Some(Mutation::FreeRcuReusesNow));
    })
    .expect_err("the mutation must be caught");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(msg, "step 1: free_rcu'd obj c0/s3/g1 must stay readable");
}
