//! The `tracing` events of the engine: target `bpfls::rcu`, stable field names, a logical
//! sequence number, no addresses; the same stepped run gives the same events.
#![cfg(not(any(loom, shuttle)))]

use bpfls_rcu::{Config, Domains, ReclaimPolicy};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Record = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Record>>>);

struct Fields<'a>(&'a mut Record);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut r = Record::new();
        r.insert("target".into(), event.metadata().target().into());
        event.record(&mut Fields(&mut r));
        self.0.lock().unwrap().push(r);
    }
}

fn scenario() -> Vec<Record> {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        let d = Domains::new(2, Config::stepped(), false);
        let task = d.tasks_trace.register_task(7);
        let g = d.tasks_trace.read_lock(&task);
        d.defer(ReclaimPolicy::AfterTasksTraceThenRcu, 41, 64, || {});
        d.tasks_trace.advance();
        drop(g);
        d.tasks_trace.advance_until_quiet();
        let r = d.rcu.read_lock(1);
        d.rcu.advance();
        drop(r);
        d.rcu.advance_until_quiet();
    });
    capture.0.lock().unwrap().clone()
}

#[test]
fn events_have_stable_fields_and_tell_the_lifecycle() {
    let events = scenario();
    let mut last_seq = None;
    for e in &events {
        assert_eq!(e["target"], "bpfls::rcu", "{e:?}");
        for field in ["seq", "domain", "op"] {
            assert!(e.contains_key(field), "event without `{field}`: {e:?}");
        }
        assert!(!e.values().any(|v| v.contains("0x")), "address-like value in {e:?}");
        let seq: u64 = e["seq"].parse().unwrap();
        assert!(last_seq.is_none_or(|l| seq > l), "seq not increasing: {e:?}");
        last_seq = Some(seq);
    }
    let ops: Vec<String> = events.iter().map(|e| format!("{}:{}", e["domain"], e["op"])).collect();
    assert_eq!(
        ops,
        [
            "tasks_trace:task_register",
            "tasks_trace:read_lock",
            "tasks_trace:call",
            "tasks_trace:gp_start",
            "tasks_trace:read_unlock",
            "tasks_trace:gp_end",
            "tasks_trace:callback_invoke",
            "rcu:chain",
            "rcu:call",
            "rcu:read_lock",
            "rcu:gp_start",
            "rcu:read_unlock",
            "rcu:gp_end",
            "rcu:callback_invoke",
            "tasks_trace:task_unregister",
        ]
    );
    let invoke = events.iter().find(|e| e["op"] == "callback_invoke").unwrap();
    assert_eq!((invoke["obj"].as_str(), invoke["gp_seq"].as_str()), ("41", "1"));
    let lock = events.iter().find(|e| e["op"] == "read_lock").unwrap();
    assert_eq!(lock["task"], "7");
    let rcu_lock = events.iter().find(|e| e["op"] == "read_lock" && e["domain"] == "rcu").unwrap();
    assert_eq!(rcu_lock["cpu"], "1");
}

#[test]
fn stepped_runs_give_identical_events() {
    assert_eq!(scenario(), scenario());
}
