//! Plain-language narration of a trace: what was linked where, which lock was taken, which
//! grace period each freed object waits for, and when it is finally freed.

use crate::run::Summary;
use crate::trace::{Line, Trace};
use std::collections::BTreeMap;

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// The storage's lifecycle: allocations, links, locks, frees, grace periods, callbacks.
    #[default]
    Lifecycle,
    /// Every probe point, read-side sections and allocator internals included.
    Everything,
}

fn article(domain: &str) -> String {
    if domain == "RCU" { "an RCU".to_string() } else { format!("a {domain}") }
}

fn domain(fields: &BTreeMap<String, u64>) -> &'static str {
    match fields.get("domain") {
        Some(1) => "Tasks-Trace",
        _ => "RCU",
    }
}

/// Short names for the objects a trace mentions: `element 1`, `storage 1`, in order of
/// allocation; ids it never saw allocated (allocator batches) stay numbers.
#[derive(Default)]
struct Names(BTreeMap<u64, String>, u64, u64);

impl Names {
    fn allocated(&mut self, site: &str, id: u64) {
        let name = if site == "storage_alloc" {
            self.2 += 1;
            format!("storage {}", self.2)
        } else {
            self.1 += 1;
            format!("element {}", self.1)
        };
        self.0.insert(id, name);
    }

    fn name(&self, id: u64) -> String {
        self.0.get(&id).cloned().unwrap_or_else(|| format!("object {id:#x}"))
    }
}

/// The sentence for one probe point, or `None` for the ones this detail level skips.
fn sentence(
    site: &str,
    f: &BTreeMap<String, u64>,
    detail: Detail,
    names: &mut Names,
) -> Option<String> {
    let get = |k: &str| f.get(k).copied().unwrap_or(0);
    if matches!(site, "selem_alloc" | "storage_alloc") {
        names.allocated(site, get("obj"));
    }
    let obj = || names.name(get("obj"));
    let text = match site {
        "local_storage_lookup" => format!("looks up map {} in the owner's storage", get("map")),
        "local_storage_update" => format!("enters the update of map {}", get("map")),
        "lookup_cache_insert" => {
            format!("caches map {}'s element in the storage's 16-slot lookup cache", get("map"))
        }
        "selem_alloc" => format!("allocates {}", obj()),
        "storage_alloc" => format!("allocates {} for the owner, to publish it", obj()),
        "selem_link" => "links the new element into the owner's storage list".to_string(),
        "storage_lock_acquire" => format!("takes the lock of {}", names.name(get("storage"))),
        "storage_lock_release" => format!("releases the lock of {}", names.name(get("storage"))),
        "bucket_lock_acquire" => {
            format!("takes the lock of bucket {} of map {}", get("bucket"), get("map"))
        }
        "bucket_lock_release" => {
            format!("releases the lock of bucket {} of map {}", get("bucket"), get("map"))
        }
        "selem_free" => format!("frees {} (unlinked from its map and storage)", obj()),
        "storage_free" => format!("frees {} (its last element left)", obj()),
        "call" => {
            format!("queues the free of {} behind {} grace period", obj(), article(domain(f)))
        }
        "reclaim_now" => format!("makes {} reusable at once (reuse_now: no grace period)", obj()),
        "free_now" => format!(
            "puts {} back in its per-CPU cache: reusable at once (reuse_now, no grace period)",
            obj()
        ),
        "gp_start" => format!("{} grace period {} starts", domain(f), get("gp_seq")),
        "gp_end" => format!(
            "{} grace period {} ends: every reader that could see the old objects has left",
            domain(f),
            get("gp_seq")
        ),
        "callback_invoke" => format!("{} callback for {} runs", domain(f), obj()),
        "slab_free" => "a freed object's memory goes back to the slab".to_string(),
        "barrier" => format!("waits for every queued {} callback (barrier)", domain(f)),
        "gp_wait" => format!("waits for {} grace period", article(domain(f))),
        "lock_wait" => "spins: the lock is held elsewhere".to_string(),
        "owner_wait" => {
            "waits for the programs using the owner to end (they hold references: the final put)"
                .to_string()
        }
        "prog_hold" => "the program blocks here, still holding its values".to_string(),
        "sys_enter" => match get("cmd") {
            1 => "enters bpf(BPF_MAP_LOOKUP_ELEM)".to_string(),
            2 => "enters bpf(BPF_MAP_UPDATE_ELEM)".to_string(),
            3 => "enters bpf(BPF_MAP_DELETE_ELEM)".to_string(),
            c => format!("enters bpf() command {c}"),
        },
        "read_lock" if detail == Detail::Everything => "enters a read-side section".to_string(),
        "read_unlock" if detail == Detail::Everything => "leaves its read-side section".to_string(),
        "slab_alloc" | "mem_cache_active" | "body_start" | "body_end"
            if detail == Detail::Everything =>
        {
            site.to_string()
        }
        _ => return None,
    };
    Some(text)
}

/// The narration of `trace`, line by line.
pub fn narrate(trace: &Trace, detail: Detail) -> Vec<String> {
    // What each step is, for its header where it starts (its outcome line comes at its end).
    let ops: BTreeMap<u64, (u64, Option<u32>, String)> = trace
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Step { step, line, cpu, op, .. } => Some((*step, (*line, *cpu, op.clone()))),
            _ => None,
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    // A body announces its next step as soon as it finished the previous one, then waits for
    // its turn: the header prints when the step does something (or ends).
    let mut pending: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut names = Names::default();
    let mut repeats = 0usize;
    let mut summary: Option<(Summary, Vec<String>, Option<Vec<String>>)> = None;
    for line in &trace.lines {
        match line {
            Line::Header { scenario_name, schedule, .. } => {
                out.push(format!("scenario {scenario_name} (schedule: {schedule:?})"));
            }
            Line::Event { site, fields, body, .. } if site == "step_start" => {
                let n = fields.get("step").copied().unwrap_or(0);
                if let (Some((line, cpu, op)), Some(b)) = (ops.get(&n), body) {
                    let on = cpu.map(|c| format!("CPU {c}")).unwrap_or_else(|| "check".into());
                    pending.insert(*b, (n, format!("step {n} (line {line}), {on}: {op}")));
                }
            }
            Line::Event { body, cpu, site, fields, .. } => {
                let Some(text) = sentence(site, fields, detail, &mut names) else { continue };
                if let Some((_, header)) = body.and_then(|b| pending.remove(&b)) {
                    if repeats > 0 {
                        out.push(format!("    (and {repeats} more)"));
                        repeats = 0;
                    }
                    out.push(header);
                }
                let who = match (body, cpu) {
                    (None, _) => "  grace periods:".to_string(),
                    (Some(_), Some(c)) if *c != u32::MAX => format!("  CPU {c}:"),
                    (Some(b), _) => format!("  CPU {b}:"),
                };
                let line = format!("{who} {text}");
                // A run of the same sentence prints once, with its count.
                if out.last() == Some(&line) {
                    repeats += 1;
                    continue;
                }
                if repeats > 0 {
                    out.push(format!("    (and {repeats} more)"));
                    repeats = 0;
                }
                out.push(line);
                continue;
            }
            Line::Step { step, line, cpu, op, result, expected, ok } => {
                if repeats > 0 {
                    out.push(format!("    (and {repeats} more)"));
                    repeats = 0;
                }
                let _ = (line, cpu, op);
                if let Some(b) = pending.iter().find(|(_, (n, _))| n == step).map(|(b, _)| *b) {
                    out.push(pending.remove(&b).expect("found").1);
                }
                let verdict = match (expected, ok) {
                    (Some(e), true) => format!("  (expected {e}: ok)"),
                    (Some(e), false) => format!("  (expected {e}: FAILED)"),
                    (None, _) => String::new(),
                };
                out.push(format!("  => step {step}: {result}{verdict}"));
            }
            Line::Attached { program, cpu, at, result, .. } => {
                out.push(format!("  CPU {cpu}: attached program {program} runs at {at}: {result}"));
            }
            Line::End { summary: s, violations, deadlock } => {
                if repeats > 0 {
                    out.push(format!("    (and {repeats} more)"));
                    repeats = 0;
                }
                summary = Some((s.clone(), violations.clone(), deadlock.clone()));
            }
        }
    }
    if let Some((s, violations, deadlock)) = summary {
        out.push(String::new());
        out.push(format!(
            "summary: grace periods: {} RCU, {} Tasks-Trace; callbacks: {} after RCU, {} after \
             Tasks-Trace; reused at once: {}; back to the slab: {}; leaked: {}; violations: {}",
            s.rcu_grace_periods,
            s.tasks_trace_grace_periods,
            s.rcu_callbacks,
            s.tasks_trace_callbacks,
            s.reused_now,
            s.slab_frees,
            s.leaked,
            s.violations
        ));
        if !violations.is_empty() {
            out.push(format!("found: {}", violations.join(", ")));
        }
        if let Some(d) = deadlock {
            out.push("deadlock:".to_string());
            out.extend(d.iter().map(|l| format!("  {l}")));
        }
    }
    out
}
