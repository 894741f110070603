//! How the engine works (documentation only; this module has no code).
//!
//! This module exists only to give the design of the grace-period engine a page of its own, as
//! sharded-slab does with its `implementation` module. It is written for two readers: someone
//! who wants to change the engine and must keep its memory-ordering argument intact, and someone
//! learning how RCU works who wants to see every moving part of a small, complete one. The code
//! is in `domain.rs` (grace periods, callbacks, drivers) and `read.rs` (the read side); the
//! comments there are local, this page is the whole story.
//!
//! # Domains and readers
//!
//! A [domain](crate::Domain) is one independent RCU flavour: its own grace-period counter, its
//! own readers, its own callback list. There are two kinds, because BPF local storage waits
//! for two kinds of readers (`kernel-semantics.md` §3.2):
//!
//! - [`Rcu`](crate::Rcu): readers are non-sleepable BPF programs and syscalls. They run with
//!   preemption disabled, so at most one section per CPU is open at a time, and a CPU is
//!   the natural place to keep reader state: one **slot per logical CPU**, allocated when the
//!   domain is built. A [`RcuReadGuard`](crate::RcuReadGuard) is neither `Send` nor `Sync`,
//!   because such a section cannot migrate.
//! - [`TasksTrace`](crate::TasksTrace): readers are sleepable programs that may block, and so
//!   migrate, inside their section. Per-CPU state cannot describe a reader that is asleep, so
//!   each reader task owns a **slot per task**, created by
//!   [`register_task`](crate::TasksTrace::register_task) (see "The Tasks-Trace reader
//!   registry" below). A [`TraceReadGuard`](crate::TraceReadGuard) is `Send`.
//!
//! The two domains never wait for each other: a Tasks-Trace grace period says nothing about
//! normal RCU readers, and [`barrier`](crate::Domain::barrier) on one domain does not imply a
//! barrier on the other. [`Domains`](crate::Domains) holds both and the
//! `rcu_trace_implies_rcu_gp()` knob, and [`Domains::defer`](crate::Domains::defer) chains
//! them when a [`ReclaimPolicy`](crate::ReclaimPolicy) needs both. With the knob set, the
//! kernel frees right after a Tasks-Trace grace period because that grace period *implies* a
//! normal one; ours does not, so `defer(AfterTasksTrace)` takes an RCU cookie when called and,
//! in the Tasks-Trace callback, frees at once if an RCU grace period has elapsed since (the
//! usual case) or chains onto RCU otherwise. Without that, a non-sleepable reader's legal read
//! of a deleted element was reported as a use after free (found by a loom model of the storage
//! layer).
//!
//! Every slot is a `CachePadded<AtomicUsize>` (`crossbeam_utils::CachePadded`, re-exported by
//! `bpfls-sync`). A slot is written only by its own reader and read by grace-period scans;
//! padding keeps two CPUs' read sides off one cache line, so entering a section on one CPU
//! never invalidates another CPU's line. `gp_seq` and `gp_done` are padded for the same reason:
//! readers load `gp_seq` on every outermost `read_lock`, and that line should change only when
//! a grace period starts.
//!
//! A domain is a value its caller owns (in time, the `Kernel`), never a `static`: loom cannot
//! model statics, and two simulated kernels must be able to run in one test process.
//!
//! # The reader slot word
//!
//! A reader's whole state is one machine word:
//!
//! ```text
//!   usize slot (64-bit target)
//!  +-------------------------------------------------+------------------+
//!  |                 snap  (48 bits)                 |  depth (16 bits) |
//!  +-------------------------------------------------+------------------+
//!   63                                             16 15                0
//!
//!   depth = 0          not inside a section (snap is then meaningless; exit stores 0)
//!   depth = n > 0      inside, nested n deep
//!   snap               the value of gp_seq the *outermost* read_lock loaded
//! ```
//!
//! `DEPTH_BITS` is 16, so sections nest at most 65 535 deep (the next `read_lock` panics).
//! Only the outermost `read_lock` loads `gp_seq` and writes a new `snap`; nested ones only add
//! one to `depth`, and nested unlocks subtract one (every slot store is `Release`; see below). Only the outermost
//! unlock stores `0`. Because the reader is the only writer of its slot, none of this needs a
//! read-modify-write: the fast path is one load of `gp_seq`, one store to the slot and one
//! barrier, and the same on the way out minus the barrier.
//!
//! # `gp_seq`, `gp_done` and what a grace period is
//!
//! Each domain has two counters:
//!
//! - `gp_seq`: the target of the latest grace period *started*. Grace periods are numbered
//!   1, 2, 3, ...; starting one is `gp_seq.fetch_add(1, AcqRel)`, and the new value is its
//!   **target** `t`. The kernel's `rcu_state.gp_seq` keeps two state bits in the low bits; we
//!   count whole grace periods, which is simpler and loses nothing because "in progress" is
//!   simply `gp_done < gp_seq`.
//! - `gp_done`: the highest target whose grace period has *completed*, advanced with
//!   `gp_done.fetch_max(t, Release)`.
//!
//! A grace period with target `t` goes through three steps (`start_gp`, `wait_for_readers` /
//! `first_blocker_id`, `complete_gp` in `domain.rs`):
//!
//! 1. **start**: `t = gp_seq.fetch_add(1, AcqRel) + 1`, then the heavy side of the fence pair
//!    (`AsymmetricFence::heavy`, below).
//! 2. **wait**: scan the slots. A reader **blocks** `t` if and only if it is inside a section
//!    (`depth != 0`) that it entered before the increment (`snap < t`):
//!
//!    ```text
//!    blocks(slot, t)  =  (slot & DEPTH_MASK) != 0  &&  (slot >> DEPTH_BITS) < t
//!    ```
//!
//!    A reader whose `snap` is already `t` or more loaded `gp_seq` *after* the increment; the
//!    ordering argument below shows that it cannot hold anything the updater removed before
//!    starting `t`, so the grace period does not wait for it. This is why a steady stream of
//!    new readers cannot starve a grace period: only readers that predate it count.
//! 3. **complete**: `gp_done.fetch_max(t, Release)`.
//!
//! `gp_done` is a high-water mark: completing `t` also completes every older target `s < t`.
//! A reader with `snap < s` also has `snap < t`, so the scan for `t` waited for every such
//! reader it saw; one that it did not see entered late enough that, by the argument below, it
//! cannot reach anything removed before `t` started, and the increment to `s` precedes the one
//! to `t`. That is what lets the threaded backend run several grace periods concurrently (one
//! per `synchronize` caller) and let them finish in any order.
//!
//! A reader's view of this, on a timeline:
//!
//! ```text
//!   updater:   unpublish P ─ gp_seq 4→5 ─ heavy() ─ scan ───── gp_done := 5 ─ free P
//!
//!   reader A:  lock(snap=4) ── uses P ───────── unlock          blocks 5: waited for
//!   reader B:                lock(snap=5) ─────── ...           5 ≥ 5: not waited for,
//!                                                               and cannot reach P
//! ```
//!
//! # The memory-ordering argument
//!
//! Three things must hold for "free after a grace period" to be safe. Each paragraph names the
//! accesses that pair, exactly as the `// ORDERING:` comments in `domain.rs` and `read.rs` do.
//!
//! **A reader that is not waited for cannot see the removed object.** The reader's outermost
//! `read_lock` (`enter` in `read.rs`) does:
//!
//! ```text
//!   snap = gp_seq.load(Acquire)          // (R1)
//!   slot.store(snap << 16 | 1, Release)  // (R2)
//!   fence.light()                        // (R3)  the reader's smp_mb()
//!   ... loads of protected pointers ...  // (R4)
//! ```
//!
//! and an updater does:
//!
//! ```text
//!   store: unpublish P                   // (U1)  e.g. rcu_assign_pointer(gp, new)
//!   gp_seq.fetch_add(1, AcqRel)          // (U2)  start_gp
//!   fence.heavy()                        // (U3)  the updater's smp_mb()
//!   slot.load(Acquire) for every slot    // (U4)  first_blocker_id
//! ```
//!
//! If (R1) reads the value written by (U2) or a later increment, the Acquire load synchronizes
//! with (U2)'s Release half, so (U1) happens-before (R4): the reader sees the new pointer, and
//! the grace period rightly does not wait for it. If (R1) reads an older value, the reader has
//! `snap < t` and the question is whether the scan sees it. That is the store-buffering (SB)
//! pattern: each side stores, fences, then loads what the other side stored. With a full
//! barrier on both sides, (R3) pairing with (U3), at least one side sees the other: either the
//! scan (U4) sees the slot store (R2) and waits, or the reader's later loads (R4) see (U1) and
//! never find P. Both fences are needed; with `SeqCst` *accesses* instead of fences, loom
//! (which models `SeqCst` accesses as `AcqRel`) reports a false use-after-free on exactly this
//! pattern (`rust-notes.md` §0, item 4); the explicit fences are what the kernel writes
//! (`smp_mb()`) and what loom can check.
//!
//! **A reader that was waited for has finished with the object.** The outermost
//! `read_unlock` (`exit` in `read.rs`) is `slot.store(0, Release)`. The scan's
//! `slot.load(Acquire)` that reads this `0` synchronizes with it, so every access of the
//! section happens-before the scan, and therefore before `complete_gp`.
//!
//! **Whoever frees after the grace period sees all of that.** `complete_gp`'s Release
//! `fetch_max` on `gp_done` pairs with the Acquire load of `gp_done` in `poll_state` and in
//! `pop_ready` (which decides that a callback may run). A callback, or the caller of
//! [`poll_state`](crate::Domain::poll_state) that sees `true`, therefore happens-after the end
//! of every section that blocked the grace period. [`synchronize`](crate::Domain::synchronize)
//! in the threaded backend runs the grace period on its own thread, so program order gives the
//! same.
//!
//! **Every slot store is `Release`, not just the exit.** The scan may read a slot value that is
//! neither `0` nor a blocker: the same CPU left its old section (Release store of `0`) and
//! already entered a new one, writing `snap >= t` with (R2), or nested inside that one. Under
//! the C++20 model that Rust uses (and that loom implements), a later plain store by the same
//! thread does not continue the release sequence of the earlier Release store, so if (R2) were
//! `Relaxed`, the scan reading it would not synchronize with the old section's exit, and
//! nothing would order the old section's reads before the free. (With the asymmetric fence the
//! reader's (R3) is only a compiler barrier, so it cannot stand in as a release fence either.)
//! This gap was found while writing this page: a loom model in which the reader leaves and
//! re-enters (`tests/loom_reentry.rs`) reported a causality violation on the freed cell. Every
//! store to a slot is therefore `Release` (a plain `mov` on x86, `stlr` on Arm), and the model
//! passes.
//!
//! **Why `get_state` is a read-modify-write.** [`get_state`](crate::Domain::get_state) returns
//! `Cookie(g + 1)` where `g` comes from `gp_seq.fetch_add(0, AcqRel)`, not from a load. The
//! caller has just unpublished something and wants to know when it may free it: cookie `g + 1`
//! is satisfied when grace period `g + 1` completes, and that grace period must not ignore a
//! reader that could still see the old pointer. Two properties of an RMW make that true. First,
//! an RMW reads the latest value in `gp_seq`'s modification order, so the increment to `g + 1`
//! comes *after* the cookie in that order; a plain load could return a stale `g` after `g + 1`
//! had already started, and a reader that snapshotted `g + 1` before seeing the unpublish would
//! then be ignored by the very grace period the cookie waits for. Second, the RMW is a Release
//! operation that heads a release sequence, and every later `fetch_add` on `gp_seq` is an RMW,
//! so it continues that sequence: a reader whose (R1) reads the target `g + 1` (or any later
//! one) synchronizes with the cookie's RMW and sees the unpublish. The Acquire half is there
//! for symmetry with `poll_state`. The stepped backend's `synchronize` uses the same cookie.
//!
//! **Why callbacks get their target when a grace period starts for them.** [`call`] does not
//! read `gp_seq` at all: it pushes the callback, untagged, onto the queue under the queue lock.
//! The target is assigned later, in `start_gp_for_callbacks`, which runs the grace period's
//! RMW (`bump_gp_seq`) *under the same lock* and tags every untagged callback with its target;
//! the heavy barrier (`gp_barrier`, possibly a `membarrier(2)` syscall) follows after the lock
//! is released and before the first scan, so callers of `call` never wait for a syscall. The lock makes
//! each enqueuer's prior stores (its unpublish) happen-before the RMW, and the RMW's release
//! half carries them to any reader that snapshots the new target, the same chain as for
//! `get_state`, with the lock in place of the cookie's RMW. Tagging at `call` time would need
//! that RMW on the shared `gp_seq` line for every callback (a contended counter on the hottest
//! update path), and it could not batch: one grace period started for a batch covers every
//! callback queued before it, which is what the kernel's "accelerate" step does and what keeps a
//! callback flood to a bounded number of grace periods.
//!
//! [`call`]: crate::Domain::call
//!
//! # The asymmetric fence (`membarrier`)
//!
//! A `fence(SeqCst)` on every `read_lock` (an `mfence` or a locked instruction on x86) is most
//! of the read side's cost. [`AsymmetricFence`](bpfls_sync::AsymmetricFence) moves it to the
//! rare side, as liburcu's "memb" flavour does: when `membarrier(2)` registration succeeds,
//! `light()` is only a compiler fence, and `heavy()` is `fence(SeqCst)`,
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, `fence(SeqCst)`. The system call makes every
//! running thread of the process execute a full barrier before it returns (a thread that is not
//! running gets one from its context switch), so the pair behaves as if the reader had executed
//! `smp_mb()` at (R3), which is all the SB argument needs.
//!
//! This argument lives at the hardware and kernel level, outside the language's memory model,
//! so no model checker can verify it: loom, shuttle and Miri have no `membarrier`. Under them
//! the engine always uses [`AsymmetricFence::symmetric`](bpfls_sync::AsymmetricFence::symmetric)
//! (`fence(SeqCst)` on both sides), and **that symmetric form is what the loom models check**.
//! The std build uses the expedited form only when
//! [`Config::asymmetric_fence`](crate::Config::asymmetric_fence) is set (the default) and
//! registration succeeds; otherwise it falls back to the symmetric form.
//! [`Domain::is_expedited`](crate::Domain::is_expedited) says which one a domain got.
//!
//! # The callback list
//!
//! `call_rcu()` callbacks live in one FIFO `VecDeque` per domain, under the queue lock. Each
//! entry has an optional target:
//!
//! ```text
//!     head                                                             tail
//!      ┌────────┬────────┬────────┬────────┬────────┬────────┬────────┐
//!      │ gp = 3 │ gp = 3 │ gp = 4 │ gp = 4 │  None  │  None  │  None  │
//!      └────────┴────────┴────────┴────────┴────────┴────────┴────────┘
//!       └── ready ───────┘└─ waiting ─────┘└──── not yet covered ─────┘
//!       gp <= gp_done (3)   gp > gp_done      by any grace period
//!       kernel: DONE        kernel: WAIT      kernel: NEXT
//! ```
//!
//! - An **untagged** callback (`gp: None`) is the kernel's "next" segment: queued, but no grace
//!   period has been started for it yet.
//! - A callback **tagged** with target `t` is the "wait" segment: it runs once `gp_done >= t`.
//!   `start_gp_for_callbacks` tags the whole untagged suffix with one new target, and targets
//!   only grow, so tags never decrease from head to tail and the ready callbacks are always a
//!   prefix of the queue. `pop_ready` takes that prefix, up to a batch limit.
//!
//! Callbacks run **one invoker at a time** (the `invoker` lock), in queue order, in batches of
//! at most `INVOKE_BATCH` (1024) between updates of the invoked count, like the kernel's
//! `rcu_do_batch` with its `blimit`: barrier waiters see progress, and a flood does not hold the
//! queue lock for long. So the set of callbacks that have run is always a prefix of the order
//! in which they were queued, and that is the property `barrier` relies on. A callback may call
//! [`call`] again (on its own domain or, as the chained policy does, on another one).
//!
//! A callback that panics still counts as invoked, so barriers and statistics stay consistent;
//! the rest of its batch goes back to the head of the queue and the panic continues to whoever
//! drove the invocation. On the callback worker the panic is caught, stored, and re-raised (with
//! its message) by the next [`barrier`](crate::Domain::barrier), instead of leaving that
//! barrier to wait for a dead worker.
//!
//! # Barrier
//!
//! The kernel's `rcu_barrier()` enqueues a sentinel callback on every CPU's list and waits until
//! all of them have run. With one FIFO list and one invoker at a time, a counter does the same
//! job: `barrier` snapshots `queued` (callbacks ever queued) and waits until `invoked` (callbacks
//! ever invoked) reaches the snapshot. Because invocations complete as a prefix of the queue
//! order, `invoked >= snapshot` means exactly "every callback queued before the barrier has
//! run". Callbacks queued after the snapshot are not waited for, as in the kernel.
//!
//! How `barrier` waits depends on the driver: with a callback worker it sleeps on a condition
//! variable that the worker notifies after each batch (and nudges the worker if it sleeps);
//! notifications are only sent when someone sleeps (`worker_idle`, `barrier_waiters`),
//! because a condvar notify is a syscall even with no waiter; without one it drives grace
//! periods and invocations itself (`drive_once`) until the count is reached; in stepped mode it
//! waits through the probes or drives [`advance`](crate::Domain::advance) itself (below).
//! [`Domains::barrier_all`](crate::Domains::barrier_all) runs the Tasks-Trace barrier first and
//! then the RCU barrier, so RCU callbacks chained from Tasks-Trace callbacks are queued before
//! the second snapshot is taken.
//!
//! # Threaded, stepped and busted
//!
//! One state machine, three drivers ([`Backend`](crate::Backend)):
//!
//! - **Threaded.** [`synchronize`](crate::Domain::synchronize) runs a grace period of its own
//!   on the caller's thread (start, wait, complete), in the style of an expedited grace period:
//!   concurrent callers run independent grace periods, each waiting only for readers older than
//!   its own increment. Callbacks are batched by the **callback worker** thread (when
//!   [`Config::callback_worker`](crate::Config::callback_worker) is set, the default outside
//!   the model checkers): each round first *gathers* (waits a bounded backoff, or until 256
//!   callbacks wait, since each grace period's `membarrier(2)` interrupts every running
//!   caller), then (`drive_once`) starts one grace period for every untagged callback, waits for it, completes it, and invokes what became ready. If only
//!   callbacks tagged by another driver are waiting, it runs a fresh grace period, which
//!   implies theirs. With a probe hook attached, its wait loop calls the `gp_wait` probe
//!   instead of backing off, so an executor can interleave other work. Without a worker
//!   (the loom models' form), callbacks run inside `barrier` and when the domain is dropped.
//!   [`advance`](crate::Domain::advance) works here too, as a non-blocking helper.
//! - **Stepped.** Nothing moves unless [`advance`](crate::Domain::advance) is called, and each
//!   call does exactly one thing and says what ([`Step`](crate::Step)), in this priority order:
//!   invoke the oldest ready callback (one per step, so a trace shows each free); else, if a
//!   grace period is in flight, end it, or report the first reader that still blocks it; else
//!   start a grace period if an untagged callback, a waiting tagged callback or a
//!   `synchronize` / `barrier` caller needs one; else [`Step::Idle`](crate::Step::Idle).
//!   `synchronize` records its cookie as a request and waits until `poll_state` says it is
//!   satisfied. While waiting, with a probe hook attached it calls the `gp_wait` probe (the
//!   stepped executor runs other logical CPUs, one of which drives `advance`); if the executor
//!   answers that every CPU is blocked, it panics with the domain's name instead of hanging.
//!   With no hook it drives `advance` itself, and the first
//!   [`Step::Blocked`](crate::Step::Blocked) makes it panic with a message that names the grace
//!   period and the reader: in a single-threaded stepped run that reader can never leave. No
//!   worker thread exists in stepped mode.
//! - **Busted.** Threaded in every respect except that the reader scan is skipped
//!   (`first_blocker_id` returns "nobody"): grace periods start, fence and complete, but never
//!   wait. This is rcutorture's `rcu_busted` (`reliability-checks.md` C3): the checkers must
//!   report use-after-free against it, or the checkers are broken.
//!
//! # Stall detection without clocks
//!
//! The core crates read no clock, so "this reader has held the grace period for too long" is
//! counted, not timed, with the threshold
//! [`Config::stall_polls`](crate::Config::stall_polls) (default 20 000):
//!
//! - threaded: `wait_for_readers` counts its polls of the slots; once the count reaches the
//!   threshold it reports the blocking reader, and reports again only if a *different* reader
//!   becomes the blocker. (Its `Backoff` sleeps between polls after a while, but the decision
//!   is made on the count.)
//! - stepped: `advance` counts the steps that found the in-flight grace period blocked (steps
//!   that invoke a callback in between do not reset the count; the end of the grace period
//!   does) and reports once, on the step where the count equals the threshold.
//!
//! A report is a [`StallReport`](crate::StallReport) (domain, grace period, reader, count),
//! kept by [`Domain::stall_reports`](crate::Domain::stall_reports) (at most 256), counted in
//! [`Stats::stalls`](crate::Stats::stalls), and emitted as a `WARN` event with `op = "stall"`.
//! The threaded grace period keeps waiting after a report: a stall is news, not a failure.
//!
//! # Guaranteed callbacks
//!
//! crossbeam-epoch documents that a deferred function "might never run"; here every callback
//! runs. While the domain lives, the worker, a `barrier` or `advance` runs it. When the domain
//! is dropped, `Drop` stops and joins the worker, then `close` drives grace periods and
//! invocations until the queue is empty. That is safe without waiting for anyone: guards and
//! task readers borrow the domain, so when its `Drop` runs none of them exists. After that the
//! domain is marked closed, and a callback that still reaches it (through the shared inner
//! state that a chained Tasks-Trace → RCU callback holds) runs at once on the caller's thread,
//! since no reader of a dropped domain can exist. This is what makes
//! [`Domains`](crate::Domains) safe to drop with chained callbacks pending, whichever field is
//! dropped first.
//!
//! # Misuse checks
//!
//! A misuse panics with a message that says what the kernel rule is, rather than corrupting
//! the domain silently:
//!
//! - **Unlock on the wrong CPU** ([`RcuReadGuard::unlock_on`](crate::RcuReadGuard::unlock_on)):
//!   a normal RCU section cannot migrate. The guard first leaves the section on the CPU where
//!   it really is, then panics, so the domain stays consistent for whoever catches the panic.
//! - **Unbalanced nesting**: a guard dropped out of order finds a depth other than its own and
//!   panics (unless the thread is already panicking). If sections entered after it are still
//!   open, leaving it ends them too (the depth drops to the guard's own depth minus one), so
//!   the inner guards' later drops are themselves reported and the domain is not wedged.
//! - **CPU out of range**, **nesting overflow**, **zero CPUs** in [`Rcu::new`](crate::Rcu::new).
//! - **Task misuse**: registering a task id twice; using a [`TaskReader`](crate::TaskReader)
//!   with another domain's `read_lock`; a task that exits (its `TaskReader` is dropped) inside
//!   a section, which is only possible if a guard was leaked. The exiting task is unregistered
//!   before the panic, so its grace periods can still end.
//! - **Waiting from a callback**: `synchronize`, `barrier` or `advance` called from a callback
//!   of the same domain would wait for (or re-enter) itself (callbacks run in softirq context in the kernel, where
//!   neither may be called). The domain records the thread that is invoking callbacks and
//!   refuses the call on that thread. On the worker, that panic reaches the caller of the next
//!   `barrier`.
//! - **Stepped waits that can never end**, as described under "Threaded, stepped and busted".
//!
//! # The Tasks-Trace reader registry
//!
//! A Tasks-Trace domain has no CPU slots; it has a registry (`Tasks`, under its own lock) of
//! `(task id, Arc<slot>)` entries, with free entries reused. A
//! [`TaskReader`](crate::TaskReader) holds its entry's index and its own `Arc` of the slot, so
//! `read_lock_trace` / `read_unlock_trace` never take the registry lock: the read side is the
//! same load, store and fence as for a CPU. Registration, unregistration and grace-period scans
//! take the lock. A task that registers while a scan is running is not missed in any way that
//! matters: if the scan holds the lock first, the task's `read_lock` comes after the scan
//! released it, so it loads a `gp_seq` at least as new as the scan's target and does not block
//! that grace period anyway.
//!
//! The kernel keeps the same state per task, in `task_struct::trc_reader_nesting`, and its
//! Tasks-Trace grace period walks the task list looking for holdouts; our scan of the registry
//! is that walk.
//!
//! # Mapping to the kernel's names
//!
//! [`get_state`]: crate::Domain::get_state
//! [`poll_state`]: crate::Domain::poll_state
//!
//! | kernel | here |
//! |---|---|
//! | `rcu_state.gp_seq` (with two state bits) | `gp_seq` (whole grace periods) and `gp_done` |
//! | `rcu_seq_snap(&rcu_state.gp_seq)` | `get_state`: `gp_seq + 1`, read with an RMW |
//! | `get_state_synchronize_rcu()` / `poll_state_synchronize_rcu()` | [`get_state`] / [`poll_state`] |
//! | per-CPU `rcu_data` quiescent-state tracking | the CPU slot word (`snap`, `depth`) |
//! | `current->rcu_read_lock_nesting` | `depth` in the slot |
//! | `task_struct::trc_reader_nesting` | the task's slot in the Tasks-Trace registry |
//! | segmented callback list: `RCU_DONE_TAIL` / `RCU_WAIT_TAIL` / `RCU_NEXT_TAIL`, tagged with `gp_seq` | one FIFO queue: ready prefix / tagged / untagged |
//! | `rcu_accelerate_cbs()` | `start_gp_for_callbacks`: tag the untagged suffix with a new target |
//! | `rcu_do_batch()` with `blimit` | `invoke_batch` with `INVOKE_BATCH` |
//! | `rcu_barrier()`: a sentinel callback per CPU | `barrier`: snapshot of `queued`, wait for `invoked` |
//! | `synchronize_rcu_expedited()` | threaded [`synchronize`](crate::Domain::synchronize) |
//! | `smp_mb()` in reader and updater / liburcu's `smp_mb_master()` | `AsymmetricFence::light` / `heavy` |
//! | RCU CPU stall warnings | [`StallReport`](crate::StallReport), counted, not timed |
//! | rcutorture's `rcu_busted` | [`Backend::Busted`](crate::Backend::Busted) |
//!
//! # Statistics
//!
//! [`Domain::stats`](crate::Domain::stats) returns a [`Stats`](crate::Stats) snapshot. The
//! counters are the checkers' bookkeeping, not part of the algorithm, so they live in
//! `bpfls_sync::untracked` atomics that loom does not explore:
//!
//! - `gp_seq`: target of the latest grace period started;
//! - `gp_started`, `gp_completed`: grace periods started and completed (concurrent threaded
//!   grace periods each count);
//! - `cbs_queued`, `cbs_invoked`, `cbs_pending`: callbacks queued, invoked, and the difference
//!   (taken under the queue lock); callbacks run at once by a closed domain are not counted;
//! - `bytes_pending`: the bytes declared by [`call_tagged`](crate::Domain::call_tagged) for
//!   callbacks not yet run (a chained callback moves its bytes from Tasks-Trace to RCU);
//! - `peak_pending`: the most callbacks pending at once, sampled at each `call`;
//! - `max_queued_per_gp`: the most callbacks queued between two callback grace-period starts.
//!   Check C6's forward-progress bound is `peak_pending <= 2 * max_queued_per_gp` while grace
//!   periods flow;
//! - `stalls`: stall reports issued.
