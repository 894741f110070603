//! The scenario parser: a complete file parses to the exact expected value; every class of
//! error is reported with its message at the right line and column; the miette rendering
//! names the file and points at the text; no input makes the parser panic.

use bpfls_kernel::{Context, GpDomain, MapType, ProgType};
use bpfls_local_storage::Errno;
use bpfls_local_storage::flags::{BPF_ANY, BPF_EXIST, BPF_NOEXIST};
use bpfls_scenario::model::{
    Check, Expect, FinalExpect, KernelConfig, MapDecl, Op, OwnerDecl, ProgAction, ProgramDecl,
    Scenario, Step, StepKind,
};
use bpfls_scenario::parse::{ScenarioError, parse};

// ---------------------------------------------------------------------------------------------
// A complete file

const FULL: &str = r#"# Every table, key and step form, once.
name = "full-example-1"
description = "every key of the format"

[kernel]
cpus = 3
trace_implies_rcu = false
optmem_max = 4096
preempt_rt = true
busy_counter = false
mutations = ["skip_cache_recheck", "one_bucket"]

# Declared out of alphabetical order on purpose: file order is creation order.
[maps.tmap]
type = "task"

[maps.smap]
type = "sk"
value_size = 16
clone = true

[maps.imap]
type = "inode"
value_size = 4

[maps.cmap]
type = "cgroup"
clone = false

[owners.t1]
type = "task"

[owners.s1]
type = "socket"

[owners.i1]
type = "inode"

[owners.c1]
type = "cgroup"

[programs.getter]
type = "tracing"
sleepable = true
context = "task"
attach = "local_storage_update"
actions = [
  { get = "tmap", owner = "t1", create = true, init = 7, write = 8, expect = 8 },
  { read = true, expect = 8 },
  { hold = true },
  { delete = "tmap", owner = "t1", expect = "ok" },
]

[programs.irq]
context = "nmi"
actions = [
  { get = "smap", owner = "child", expect = "null" },
  { get = "cmap", owner = "c1", create = true, expect = "value" },
  { read = true },
  { delete = "imap", owner = "i1", expect = "ENOENT" },
]

[programs.empty]
type = "iter"
context = "softirq"

[[step]]
cpu = 0
update = "tmap"
owner = "t1"
value = 7
flags = "noexist"
until = "selem_alloc"
expect = "EAGAIN"

[[step]]
cpu = 1
update = "tmap"
owner = "t1"
value = 9
expect = "ok"

[[step]]
cpu = 0
resume = true

[[step]]
cpu = 2
lookup = "tmap"
owner = "t1"
expect = 9

[[step]]
cpu = 1
delete = "smap"
owner = "s1"
expect = "ENOENT"

[[step]]
cpu = 2
run = "getter"
until = "prog_hold"

[[step]]
cpu = 2
resume = true

[[step]]
cpu = 0
accept = "s1"
as = "child"

[[step]]
cpu = 1
update = "smap"
owner = "child"
value = 1
flags = "exist"

[[step]]
grace_period = "tasks_trace"
until = "step"

[[step]]
grace_period = "rcu"

[[step]]
check = "storage"
owner = "t1"
expect = "none"

[[step]]
check = "storage"
owner = "child"
expect = "present"

[[step]]
check = "charge"
owner = "s1"
expect = 264

[[step]]
check = "pending"
domain = "rcu"
expect = 0

[[step]]
cpu = 0
exit = "t1"
expect = "ok"

[[step]]
cpu = 1
close = "s1"

[[step]]
cpu = 2
evict = "i1"
expect = "EBUSY"

[[step]]
cpu = 0
rmdir = "c1"
until = "storage_free"

[[step]]
cpu = 1
close_map = "smap"
expect = "ok"

[[step]]
cpu = 1
run = "irq"
expect = "EINVAL"

[[step]]
grace_period = "tasks_trace"
until = "quiet"

[expect]
violations = ["UseAfterFree", "I15"]
deadlock = true
"#;

/// The 1-based lines of every `[[step]]` header of `text`.
fn step_header_lines(text: &str) -> Vec<usize> {
    text.lines().enumerate().filter(|(_, l)| l.trim() == "[[step]]").map(|(i, _)| i + 1).collect()
}

#[test]
fn a_complete_file_parses_to_the_exact_scenario() {
    let s = parse("full.toml", FULL).expect("the full example is valid");
    let lines = step_header_lines(FULL);
    assert_eq!(lines.len(), 22);
    assert_eq!(lines[0], 67, "the first [[step]] header");

    let op = |i: usize, cpu: u32, op: Op, until: Option<&'static str>, expect: Option<Expect>| {
        Step { line: lines[i], kind: StepKind::Op { cpu, op, until, expect } }
    };
    let other = |i: usize, kind: StepKind| Step { line: lines[i], kind };
    let (tmap, smap, imap, cmap) = (0, 1, 2, 3);
    let (t1, s1, i1, c1, child) = (0, 1, 2, 3, 4);

    let expected = Scenario {
        name: "full-example-1".into(),
        description: "every key of the format".into(),
        kernel: KernelConfig {
            cpus: 3,
            trace_implies_rcu: false,
            optmem_max: 4096,
            preempt_rt: true,
            busy_counter: false,
            busted_rcu: false,
            mutations: vec!["skip_cache_recheck".into(), "one_bucket".into()],
        },
        maps: vec![
            MapDecl {
                name: "tmap".into(),
                ty: MapType::Task,
                value_size: 8,
                clone: false,
                uptr: false,
            },
            MapDecl {
                name: "smap".into(),
                ty: MapType::Sk,
                value_size: 16,
                clone: true,
                uptr: false,
            },
            MapDecl {
                name: "imap".into(),
                ty: MapType::Inode,
                value_size: 4,
                clone: false,
                uptr: false,
            },
            MapDecl {
                name: "cmap".into(),
                ty: MapType::Cgrp,
                value_size: 8,
                clone: false,
                uptr: false,
            },
        ],
        owners: vec![
            OwnerDecl { name: "t1".into(), kind: MapType::Task, accepted_by: None },
            OwnerDecl { name: "s1".into(), kind: MapType::Sk, accepted_by: None },
            OwnerDecl { name: "i1".into(), kind: MapType::Inode, accepted_by: None },
            OwnerDecl { name: "c1".into(), kind: MapType::Cgrp, accepted_by: None },
            OwnerDecl { name: "child".into(), kind: MapType::Sk, accepted_by: Some(7) },
        ],
        programs: vec![
            ProgramDecl {
                name: "getter".into(),
                ty: ProgType::Tracing,
                sleepable: true,
                context: Context::Task,
                attach: Some("local_storage_update"),
                actions: vec![
                    ProgAction::Get {
                        map: tmap,
                        owner: t1,
                        create: true,
                        init: Some(7),
                        write: Some(8),
                        expect: Some(Expect::Value(8)),
                    },
                    ProgAction::Read { expect: Some(Expect::Value(8)) },
                    ProgAction::Hold,
                    ProgAction::Delete { map: tmap, owner: t1, expect: Some(Expect::Ok) },
                ],
            },
            ProgramDecl {
                name: "irq".into(),
                ty: ProgType::Lsm,
                sleepable: false,
                context: Context::Nmi,
                attach: None,
                actions: vec![
                    ProgAction::Get {
                        map: smap,
                        owner: child,
                        create: false,
                        init: None,
                        write: None,
                        expect: Some(Expect::Null),
                    },
                    ProgAction::Get {
                        map: cmap,
                        owner: c1,
                        create: true,
                        init: None,
                        write: None,
                        expect: Some(Expect::Some),
                    },
                    ProgAction::Read { expect: None },
                    ProgAction::Delete {
                        map: imap,
                        owner: i1,
                        expect: Some(Expect::Errno(Errno::ENOENT)),
                    },
                ],
            },
            ProgramDecl {
                name: "empty".into(),
                ty: ProgType::Iter,
                sleepable: false,
                context: Context::Softirq,
                attach: None,
                actions: vec![],
            },
        ],
        steps: vec![
            op(
                0,
                0,
                Op::Update { map: tmap, owner: t1, value: 7, flags: BPF_NOEXIST },
                Some("selem_alloc"),
                Some(Expect::Errno(Errno::EAGAIN)),
            ),
            op(
                1,
                1,
                Op::Update { map: tmap, owner: t1, value: 9, flags: BPF_ANY },
                None,
                Some(Expect::Ok),
            ),
            other(2, StepKind::Resume { cpu: 0 }),
            op(3, 2, Op::Lookup { map: tmap, owner: t1 }, None, Some(Expect::Value(9))),
            op(4, 1, Op::Delete { map: smap, owner: s1 }, None, Some(Expect::Errno(Errno::ENOENT))),
            op(5, 2, Op::Run { program: 0 }, Some("prog_hold"), None),
            other(6, StepKind::Resume { cpu: 2 }),
            op(7, 0, Op::Accept { parent: s1, child }, None, None),
            op(
                8,
                1,
                Op::Update { map: smap, owner: child, value: 1, flags: BPF_EXIST },
                None,
                None,
            ),
            other(9, StepKind::GracePeriod { domain: GpDomain::TasksTrace, quiesce: false }),
            other(10, StepKind::GracePeriod { domain: GpDomain::Rcu, quiesce: true }),
            other(
                11,
                StepKind::Check { check: Check::Storage { owner: t1 }, expect: Expect::NoStorage },
            ),
            other(
                12,
                StepKind::Check {
                    check: Check::Storage { owner: child },
                    expect: Expect::HasStorage,
                },
            ),
            other(
                13,
                StepKind::Check { check: Check::Charge { owner: s1 }, expect: Expect::Count(264) },
            ),
            other(
                14,
                StepKind::Check {
                    check: Check::Pending { domain: GpDomain::Rcu },
                    expect: Expect::Count(0),
                },
            ),
            op(15, 0, Op::Exit { owner: t1 }, None, Some(Expect::Ok)),
            op(16, 1, Op::Close { owner: s1 }, None, None),
            op(17, 2, Op::Evict { owner: i1 }, None, Some(Expect::Errno(Errno::EBUSY))),
            op(18, 0, Op::Rmdir { owner: c1 }, Some("storage_free"), None),
            op(19, 1, Op::CloseMap { map: smap }, None, Some(Expect::Ok)),
            op(20, 1, Op::Run { program: 1 }, None, Some(Expect::Errno(Errno::EINVAL))),
            other(21, StepKind::GracePeriod { domain: GpDomain::TasksTrace, quiesce: true }),
        ],
        expect: FinalExpect {
            violations: vec!["UseAfterFree".into(), "I15".into()],
            deadlock: true,
        },
    };
    assert_eq!(s, expected);
}

#[test]
fn defaults_fill_everything_left_out() {
    let text = "name = \"min\"\ndescription = \"nothing happens\"\n";
    let s = parse("min.toml", text).unwrap();
    assert_eq!(s.kernel, KernelConfig::default());
    assert_eq!(KernelConfig::default().cpus, 2);
    assert!(s.maps.is_empty() && s.owners.is_empty() && s.programs.is_empty());
    assert!(s.steps.is_empty());
    assert_eq!(s.expect, FinalExpect::default());

    let text = "name = \"p\"\ndescription = \"d\"\n[programs.p]\n";
    let p = &parse("p.toml", text).unwrap().programs[0];
    assert_eq!(
        (p.ty, p.sleepable, p.context, p.attach),
        (ProgType::Lsm, false, Context::Task, None)
    );
    assert!(p.actions.is_empty());
}

#[test]
fn steps_may_be_an_array_of_inline_tables() {
    let text = r#"name = "inline"
description = "steps as an inline array"
[maps.m]
type = "task"
[owners.t]
type = "task"
step = [
  { cpu = 0, update = "m", owner = "t", until = "selem_alloc" },
  { cpu = 0, resume = true },
  { grace_period = "rcu" },
]
"#;
    // `step = [...]` after `[owners.t]` would belong to that table: put it first instead.
    assert!(parse("inline.toml", text).is_err());
    let text = r#"name = "inline"
description = "steps as an inline array"
step = [
  { cpu = 0, update = "m", owner = "t", until = "selem_alloc" },

  { cpu = 0, resume = true }, { grace_period = "rcu" },
]
[maps.m]
type = "task"
[owners.t]
type = "task"
"#;
    let s = parse("inline.toml", text).unwrap();
    let lines: Vec<usize> = s.steps.iter().map(|s| s.line).collect();
    assert_eq!(lines, [4, 6, 6]);
    assert_eq!(s.steps[1].kind, StepKind::Resume { cpu: 0 });
}

#[test]
fn the_format_document_example_parses() {
    let doc = include_str!("../../../docs/scenario-format.md");
    let start = doc.find("```toml\n").expect("the document has a toml example") + "```toml\n".len();
    let len = doc[start..].find("```").expect("the example ends");
    let example = &doc[start..start + len];
    let s = parse("docs/scenario-format.md", example)
        .unwrap_or_else(|e| panic!("the documented example must parse:\n{}", e.render()));
    assert!(!s.steps.is_empty());
}

#[test]
fn every_file_in_scenarios_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("scenarios/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let shown = path.display().to_string();
            let s = parse(&shown, &text).unwrap_or_else(|e| panic!("{}", e.render()));
            assert_eq!(Some(s.name.as_str()), path.file_stem().and_then(|f| f.to_str()));
            n += 1;
        }
    }
    assert!(n >= 1);
}

// ---------------------------------------------------------------------------------------------
// Errors, each with its message and its line:column

/// 14 lines declaring maps `tm` (task) and `sm` (sk), and owners `t` (task), `s` (socket),
/// `i` (inode), `c` (cgroup): what a case appends starts on line 15.
const HEAD: &str = r#"name = "case"
description = "an error case"
[maps.tm]
type = "task"
[maps.sm]
type = "sk"
[owners.t]
type = "task"
[owners.s]
type = "socket"
[owners.i]
type = "inode"
[owners.c]
type = "cgroup"
"#;

fn case(tail: &str) -> ScenarioError {
    let text = format!("{HEAD}{tail}");
    match parse("case.toml", &text) {
        Ok(s) => panic!("expected an error, parsed {s:#?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_at(e: &ScenarioError, line: usize, column: usize, message: &str) {
    assert!(e.message().contains(message), "message {:?} should contain {message:?}", e.message());
    assert_eq!((e.line(), e.column()), (line, column), "location of {e}");
    let display = e.to_string();
    assert!(display.starts_with(&format!("{}:{line}:{column}: ", e.path())), "{display}");
}

#[test]
fn unknown_names_are_reported_at_the_name() {
    let e = case("[[step]]\ncpu = 0\nupdate = \"tmx\"\nowner = \"t\"\n");
    assert_at(&e, 17, 10, "unknown map `tmx`: expected one of the [maps] tables: `tm` or `sm`");
    assert_eq!(e.help_text(), Some("did you mean `tm`?"));

    let e = case("[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"tt\"\n");
    assert_at(&e, 18, 9, "unknown owner `tt`: expected one of `t`, `s`, `i` or `c`");

    let e = case("[[step]]\ncpu = 0\nrun = \"prog\"\n");
    assert_at(&e, 17, 7, "unknown program `prog`: there are no [programs.NAME] tables");

    let e = case("[programs.p]\n[[step]]\ncpu = 1\nrun = \"q\"\n");
    assert_at(&e, 18, 7, "unknown program `q`: expected one of the [programs] tables: `p`");

    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nowner = \"t\"\nuntil = \"selem_aloc\"\n");
    assert_at(&e, 19, 9, "unknown probe point `selem_aloc`: expected one of `sys_enter`");
    assert_eq!(e.help_text(), Some("did you mean `selem_alloc`?"));

    let e = case("[programs.p]\nattach = \"nowhere\"\n");
    assert_at(&e, 16, 10, "unknown probe point `nowhere`");

    let e = case("[kernel]\nmutations = [\"one_bucket\", \"skip_cache_recheckk\"]\n");
    assert_at(&e, 16, 28, "unknown mutation `skip_cache_recheckk`: expected one of");
    assert_eq!(e.help_text(), Some("did you mean `skip_cache_recheck`?"));

    let e = case("[expect]\nviolations = [\"UseAfterFre\"]\n");
    assert_at(&e, 16, 15, "unknown violation `UseAfterFre`: expected one of `UseAfterFree`");

    let e = case("[programs.p]\nactions = [{ get = \"nomap\", owner = \"t\" }]\n");
    assert_at(&e, 16, 20, "unknown map `nomap`");

    let e = case("[programs.p]\nactions = [{ delete = \"tm\", owner = \"nobody\" }]\n");
    assert_at(&e, 16, 37, "unknown owner `nobody`");

    let e = case("[[step]]\ngrace_period = \"srcu\"\n");
    assert_at(&e, 16, 16, "unknown grace-period domain `srcu`: expected `rcu` or `tasks_trace`");

    let e = case("[[step]]\ncheck = \"pending\"\ndomain = \"rcuu\"\nexpect = 0\n");
    assert_at(&e, 17, 10, "unknown grace-period domain `rcuu`");

    let e = case("[[step]]\ncheck = \"charges\"\nowner = \"s\"\nexpect = 0\n");
    assert_at(
        &e,
        16,
        9,
        "unknown check `charges`: expected `storage`, `charge`, `pending` or `elements`",
    );

    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nowner = \"t\"\nflags = \"no_exist\"\n");
    assert_at(&e, 19, 9, "unknown update flags `no_exist`: expected `any`, `noexist` or `exist`");

    let e = case("[[step]]\ngrace_period = \"rcu\"\nuntil = \"quiescent\"\n");
    assert_at(&e, 17, 9, "unknown grace-period progress `quiescent`: expected `quiet`");

    let e = case("[maps.x]\ntype = \"socket\"\n");
    assert_at(&e, 16, 8, "unknown map type `socket`: expected `task`, `sk`, `inode` or `cgroup`");
    assert_eq!(e.help_text(), Some("a socket storage map is `sk`"));

    let e = case("[owners.x]\ntype = \"sk\"\n");
    assert_at(&e, 16, 8, "unknown owner type `sk`: expected `task`, `socket`, `inode` or `cgroup`");

    let e = case("[programs.p]\ntype = \"kprobe\"\n");
    assert_at(
        &e,
        16,
        8,
        "unknown program type `kprobe`: expected `tracing`, `lsm`, `iter` or `syscall`",
    );

    let e = case("[programs.p]\ncontext = \"irq\"\n");
    assert_at(&e, 16, 11, "unknown context `irq`: expected `task`, `softirq`, `hardirq` or `nmi`");

    let e = case("[[step]]\ncpu = 0\ndelete = \"tm\"\nowner = \"t\"\nexpect = \"ENOENTT\"\n");
    assert_at(
        &e,
        19,
        10,
        "unknown outcome \"ENOENTT\" for a `delete`: expected \"ok\" or an errno name",
    );
    assert_eq!(e.help_text(), Some("did you mean `ENOENT`?"));
}

#[test]
fn cpus_must_exist() {
    let e = case("[[step]]\ncpu = 2\nlookup = \"tm\"\nowner = \"t\"\n");
    assert_at(&e, 16, 7, "cpu 2 does not exist: expected a CPU in 0..=1 (the kernel has 2 CPUs)");

    let e = case("[kernel]\ncpus = 1\n[[step]]\ncpu = 1\nresume = true\n");
    assert_at(&e, 18, 7, "cpu 1 does not exist: expected a CPU in 0..=0 (the kernel has 1 CPU)");

    let e = case("[kernel]\ncpus = 0\n");
    assert_at(&e, 16, 8, "cpus = 0 is out of range: expected 1..=64");
    let e = case("[kernel]\ncpus = 65\n");
    assert_at(&e, 16, 8, "cpus = 65 is out of range: expected 1..=64");
    assert!(parse("k.toml", &format!("{HEAD}[kernel]\ncpus = 64\n")).is_ok());

    let e = case("[[step]]\ncpu = -1\nlookup = \"tm\"\nowner = \"t\"\n");
    assert_at(&e, 16, 7, "invalid value: integer `-1`, expected u32");
}

#[test]
fn owners_must_be_of_the_kind_the_operation_needs() {
    let e = case("[[step]]\ncpu = 0\nexit = \"s\"\n");
    assert_at(&e, 17, 8, "`exit` needs a task, but `s` is a socket: expected a task owner");
    let e = case("[[step]]\ncpu = 0\nclose = \"t\"\n");
    assert_at(&e, 17, 9, "`close` needs a socket, but `t` is a task");
    let e = case("[[step]]\ncpu = 0\nevict = \"c\"\n");
    assert_at(&e, 17, 9, "`evict` needs an inode, but `c` is a cgroup");
    let e = case("[[step]]\ncpu = 0\nrmdir = \"i\"\n");
    assert_at(&e, 17, 9, "`rmdir` needs a cgroup, but `i` is an inode");
    let e = case("[[step]]\ncpu = 0\naccept = \"t\"\nas = \"n\"\n");
    assert_at(&e, 17, 10, "`accept` needs a socket, but `t` is a task");
    let e = case("[[step]]\ncheck = \"charge\"\nowner = \"t\"\nexpect = 0\n");
    assert_at(&e, 17, 9, "a charge check needs a socket, but `t` is a task");
}

#[test]
fn owners_must_match_the_map_type() {
    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nowner = \"s\"\n");
    assert_at(
        &e,
        18,
        9,
        "owner `s` is a socket, but map `tm` (type \"task\") holds storage for tasks: expected a task owner",
    );
    let e = case("[programs.p]\nactions = [\n  { get = \"sm\", owner = \"t\" },\n]\n");
    assert_at(
        &e,
        17,
        25,
        "owner `t` is a task, but map `sm` (type \"sk\") holds storage for sockets",
    );
    let e = case("[[step]]\ncpu = 0\nlookup = \"sm\"\nowner = \"i\"\n");
    assert_at(&e, 18, 9, "owner `i` is an inode, but map `sm`");
}

#[test]
fn a_step_has_exactly_one_verb_and_only_its_keys() {
    let e = case("[[step]]\ncpu = 0\nowner = \"t\"\n");
    assert_at(&e, 15, 1, "a step without a verb: expected exactly one of `update`, `lookup`");

    let e = parse("f.toml", &format!("step = 1\n{HEAD}")).unwrap_err();
    assert_at(&e, 1, 8, "invalid type: integer `1`, expected a sequence");

    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nlookup = \"tm\"\nowner = \"t\"\n");
    assert_at(&e, 18, 10, "a step with two verbs, `update` and `lookup`: expected exactly one of");

    let e = case("[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nvalue = 3\n");
    assert_at(
        &e,
        19,
        9,
        "`value` does not belong in a `lookup` step: expected only `cpu`, `lookup`, `owner`, `expect` or `until`",
    );

    let e = case("[[step]]\ncpu = 0\ngrace_period = \"rcu\"\n");
    assert_at(&e, 16, 7, "`cpu` does not belong in a `grace_period` step");
    assert_eq!(e.help_text(), Some("grace periods and checks are global: they run on no CPU"));

    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nowner = \"t\"\nas = \"x\"\n");
    assert_at(&e, 19, 6, "`as` does not belong in an `update` step");

    let e = case("[[step]]\ncheck = \"pending\"\nowner = \"t\"\nexpect = 0\n");
    assert_at(&e, 17, 9, "`owner` does not belong in a `check = \"pending\"` step");

    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nuntil = \"selem_alloc\"\n");
    assert_at(&e, 17, 10, "an `update` step needs `owner`: expected owner = \"NAME\"");

    let e = case("[[step]]\nupdate = \"tm\"\nowner = \"t\"\n");
    assert_at(&e, 16, 10, "an `update` step needs `cpu`: expected cpu = N");

    let e = case("[[step]]\ncpu = 0\naccept = \"s\"\n");
    assert_at(&e, 17, 10, "an `accept` step needs `as`");

    let e = case("[[step]]\ncheck = \"storage\"\nowner = \"t\"\n");
    assert_at(
        &e,
        16,
        9,
        "a `check` step needs `expect`: expected expect = \"none\" or \"present\"",
    );

    let e = case("[[step]]\ncpu = 0\nresume = false\n");
    assert_at(&e, 17, 10, "resume = false: expected `resume = true`");

    // Actions.
    let e = case("[programs.p]\nactions = [{ owner = \"t\" }]\n");
    assert_at(
        &e,
        16,
        12,
        "an action without a verb: expected exactly one of `get`, `read`, `hold`, `uptr` or `delete`",
    );
    let e = case("[programs.p]\nactions = [{ hold = true, read = true }]\n");
    assert_at(&e, 16, 34, "an action with two verbs, `hold` and `read`");
    let e = case("[programs.p]\nactions = [{ hold = true, owner = \"t\" }]\n");
    assert_at(&e, 16, 35, "`owner` does not belong in a `hold` action: expected only `hold`");
    let e = case("[programs.p]\nactions = [{ get = \"tm\" }]\n");
    assert_at(&e, 16, 20, "a `get` action needs `owner = \"NAME\"`");
    let e = case("[programs.p]\nactions = [{ read = true }]\n");
    assert_at(&e, 16, 21, "a `read` re-reads the value of an earlier `get`");
    let e = case("[programs.p]\nactions = [{ get = \"tm\", owner = \"t\", init = 3 }]\n");
    assert_at(&e, 16, 46, "`init` is the value of a created element: expected `create = true`");
    let e = case("[programs.p]\nactions = [{ hold = false }]\n");
    assert_at(&e, 16, 21, "hold = false: expected `hold = true`");
}

#[test]
fn a_resume_needs_a_paused_step_on_its_cpu() {
    let e = case("[[step]]\ncpu = 0\nresume = true\n");
    assert_at(&e, 16, 7, "CPU 0 has no paused step to resume: expected an earlier step on CPU 0");

    // Paused on CPU 0, resumed on CPU 1.
    let tail = "[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nuntil = \"read_lock\"\n\
                [[step]]\ncpu = 1\nresume = true\n";
    assert_at(&case(tail), 21, 7, "CPU 1 has no paused step to resume");

    // Paused once, resumed twice.
    let tail = "[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nuntil = \"read_lock\"\n\
                [[step]]\ncpu = 0\nresume = true\n[[step]]\ncpu = 0\nresume = true\n";
    assert_at(&case(tail), 24, 7, "CPU 0 has no paused step to resume");

    // A later operation on the paused CPU finishes the paused one: nothing is left to resume.
    let tail = "[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nuntil = \"read_lock\"\n\
                [[step]]\ncpu = 0\ndelete = \"tm\"\nowner = \"t\"\n[[step]]\ncpu = 0\nresume = true\n";
    assert_at(&case(tail), 25, 7, "CPU 0 has no paused step to resume");
    // ... unless it pauses itself.
    let tail = "[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nuntil = \"read_lock\"\n\
                [[step]]\ncpu = 0\ndelete = \"tm\"\nowner = \"t\"\nuntil = \"call\"\n\
                [[step]]\ncpu = 0\nresume = true\n";
    assert!(parse("ok.toml", &format!("{HEAD}{tail}")).is_ok());

    let e = case("[[step]]\ncpu = 0\nresume = true\nuntil = \"call\"\n");
    assert_at(
        &e,
        18,
        9,
        "`until` does not belong in a `resume` step: expected only `cpu` or `resume`",
    );
}

#[test]
fn accepted_names_are_new_and_exist_only_from_their_accept_on() {
    let e = case("[[step]]\ncpu = 0\naccept = \"s\"\nas = \"t\"\n");
    assert_at(
        &e,
        18,
        6,
        "owner `t` already exists (from an [owners] table): expected a new name for the accepted socket",
    );

    let tail = "[[step]]\ncpu = 0\naccept = \"s\"\nas = \"n\"\n\
                [[step]]\ncpu = 1\naccept = \"s\"\nas = \"n\"\n";
    assert_at(&case(tail), 22, 6, "owner `n` already exists (from the accept on line 15)");

    let tail = "[[step]]\ncpu = 0\nlookup = \"sm\"\nowner = \"n\"\n\
                [[step]]\ncpu = 0\naccept = \"s\"\nas = \"n\"\n";
    assert_at(
        &case(tail),
        18,
        9,
        "owner `n` does not exist yet: expected an owner created before this step (the accept on line 19 creates it)",
    );

    // An accepted socket can itself be a listener, and programs may name it.
    let tail = "[programs.p]\nactions = [{ get = \"sm\", owner = \"n2\" }]\n\
                [[step]]\ncpu = 0\naccept = \"s\"\nas = \"n\"\n\
                [[step]]\ncpu = 0\naccept = \"n\"\nas = \"n2\"\n";
    let s = parse("ok.toml", &format!("{HEAD}{tail}")).unwrap();
    assert_eq!(s.owners.len(), 6);
    assert_eq!(
        s.owners[5],
        OwnerDecl { name: "n2".into(), kind: MapType::Sk, accepted_by: Some(1) }
    );
    assert_eq!(
        s.programs[0].actions[0],
        ProgAction::Get { map: 1, owner: 5, create: false, init: None, write: None, expect: None }
    );
}

#[test]
fn value_sizes_are_bounded() {
    let e = case("[maps.x]\ntype = \"task\"\nvalue_size = 0\n");
    assert_at(&e, 17, 14, "value_size = 0 is out of range: expected 1..=65407");
    let e = case("[maps.x]\ntype = \"task\"\nvalue_size = 65408\n");
    assert_at(&e, 17, 14, "value_size = 65408 is out of range: expected 1..=65407");
    let e = case("[maps.x]\nvalue_size = 8\n");
    assert_at(
        &e,
        15,
        7,
        "map `x` has no `type`: expected type = \"task\", \"sk\", \"inode\" or \"cgroup\"",
    );
    let e = case("[owners.x]\n");
    assert_at(&e, 15, 9, "owner `x` has no `type`");
}

#[test]
fn expectations_must_fit_their_step() {
    let e = case("[[step]]\ncpu = 0\ndelete = \"tm\"\nowner = \"t\"\nexpect = 7\n");
    assert_at(&e, 19, 10, "expect = 7 does not fit a `delete`: an integer is a looked-up value");
    let e = case("[[step]]\ncpu = 0\nupdate = \"tm\"\nowner = \"t\"\nexpect = \"null\"\n");
    assert_at(&e, 19, 10, "unknown outcome \"null\" for an `update`");
    let e = case("[[step]]\ncpu = 0\nexit = \"t\"\nexpect = true\n");
    assert_at(&e, 18, 10, "expect = true does not fit an `exit`: expected \"ok\" or an errno name");
    let e = case("[[step]]\ncpu = 0\nlookup = \"tm\"\nowner = \"t\"\nexpect = -1\n");
    assert_at(&e, 19, 10, "expect = -1 is negative");
    let e = case("[[step]]\ncheck = \"storage\"\nowner = \"t\"\nexpect = 3\n");
    assert_at(
        &e,
        18,
        10,
        "expect = 3 does not fit a storage check: expected \"none\" or \"present\"",
    );
    let e = case("[[step]]\ncheck = \"charge\"\nowner = \"s\"\nexpect = \"none\"\n");
    assert_at(&e, 18, 10, "expect = \"none\" does not fit a charge check: expected an integer");
    let e = case("[[step]]\ncheck = \"pending\"\ndomain = \"rcu\"\nexpect = \"0\"\n");
    assert_at(&e, 18, 10, "does not fit a pending check");
    let e = case("[programs.p]\nactions = [{ get = \"tm\", owner = \"t\", expect = \"ok\" }]\n");
    assert_at(
        &e,
        16,
        48,
        "expect = \"ok\" does not fit a `get`: expected \"null\", \"value\" or an integer",
    );
    let e = case(
        "[programs.p]\nactions = [\n{ get = \"tm\", owner = \"t\" },\n{ read = true, expect = \"value\" },\n]\n",
    );
    assert_at(&e, 18, 25, "expect = \"value\" does not fit a `read`: expected an integer");
    let e = case("[programs.p]\nactions = [{ delete = \"tm\", owner = \"t\", expect = 0 }]\n");
    assert_at(&e, 16, 51, "expect = 0 does not fit a `delete`: an integer is a looked-up value");
}

#[test]
fn unknown_keys_are_reported_at_the_key() {
    let e = parse("f.toml", &format!("steps = []\n{HEAD}")).unwrap_err();
    assert_at(&e, 1, 1, "unknown field `steps`, expected one of `name`, `description`");
    // After a table header, a key belongs to that table.
    let e = case("steps = []\n");
    assert_at(&e, 15, 1, "unknown field `steps`, expected `type`");
    let e = case("[[step]]\ncpu = 0\nlookup = \"tm\"\nownr = \"t\"\n");
    assert_at(&e, 18, 1, "unknown field `ownr`, expected one of `cpu`, `update`");
    assert_eq!(e.help_text(), Some("did you mean `owner`?"));
    let e = case("[kernel]\ncpu = 4\n");
    assert_at(&e, 16, 1, "unknown field `cpu`, expected one of `cpus`");
    let e = case("[maps.x]\ntype = \"task\"\nvalu_size = 8\n");
    assert_at(
        &e,
        17,
        1,
        "unknown field `valu_size`, expected one of `type`, `value_size`, `clone`",
    );
    let e = case("[programs.p]\nactions = [{ get = \"tm\", owner = \"t\", creat = true }]\n");
    assert_at(&e, 16, 39, "unknown field `creat`");
    let e = case("[expect]\nviolation = []\n");
    assert_at(&e, 16, 1, "unknown field `violation`, expected `violations` or `deadlock`");
}

#[test]
fn file_level_errors() {
    let e = parse("f.toml", "description = \"d\"\n").unwrap_err();
    assert_at(&e, 1, 1, "missing `name`: expected name = \"...\" ([a-z0-9-]+)");
    let e = parse("f.toml", "name = \"n\"\n").unwrap_err();
    assert_at(&e, 1, 1, "missing `description`");
    let e = parse("f.toml", "name = \"Big Name\"\ndescription = \"d\"\n").unwrap_err();
    assert_at(&e, 1, 8, "invalid scenario name \"Big Name\": expected [a-z0-9-]+");
    let e = parse("f.toml", "name = \"n\"\ndescription = \"\"\"two\nlines\"\"\"\n").unwrap_err();
    assert_at(&e, 2, 15, "the description spans several lines: expected one line");
    let e = parse("f.toml", "").unwrap_err();
    assert_at(&e, 1, 1, "missing `name`");

    // TOML errors.
    let e = case("[kernel]\ncpus = \"2\"\n");
    assert_at(&e, 16, 8, "invalid type: string \"2\", expected u32");
    let e = case("[kernel]\ncpus = 2\ncpus = 3\n");
    assert_at(&e, 17, 1, "duplicate key `cpus`: a key may appear only once in a table");
    let e = case("[[step]\n");
    assert_at(&e, 15, 8, "unclosed array table, expected `]`");
    let e = case("[maps.x]\ntype = \"task\n");
    assert_at(&e, 16, 13, "invalid basic string");
    let e = case("[kernel]\ncpus = 2\n[kernel]\n");
    assert_eq!(e.line(), 17);
    let e = parse("f.toml", &format!("kernel = 3\n{HEAD}")).unwrap_err();
    assert_at(&e, 1, 10, "invalid type: integer `3`, expected a [kernel] table");
    let e = parse("f.toml", "maps = 3\nname = \"n\"\n").unwrap_err();
    assert_at(&e, 1, 8, "expected a table of named tables, like [maps.NAME]");
    let e = case("[expect]\nviolations = [\"Leak\", \"Leak\"]\n");
    assert_at(&e, 16, 23, "violation `Leak` is listed twice");
}

#[test]
fn columns_count_characters_not_bytes() {
    let e =
        case("[maps.\"é\"]\ntype = \"task\"\n[[step]]\ncpu = 0\nlookup = \"é\"\nowner = \"é\"\n");
    // `é` is a map, not an owner: the owner name is reported.
    assert_at(&e, 20, 9, "unknown owner `é`");
    let e = case("# ééé\n[kernel]\ncpus = 99 # ééé\n");
    assert_at(&e, 17, 8, "cpus = 99");
}

#[test]
fn the_miette_rendering_names_the_file_and_points_at_the_text() {
    let e = case("[[step]]\ncpu = 0\nupdate = \"tmx\"\nowner = \"t\"\n");
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &e)
        .unwrap();
    assert_eq!(out, e.render());
    assert!(out.contains("unknown map `tmx`"), "{out}");
    assert!(out.contains("[case.toml:17:10]"), "{out}");
    assert!(out.contains("update = \"tmx\""), "{out}");
    // The label's marker line: the span is underlined and labelled.
    let marker = out
        .lines()
        .find(|l| l.contains('┬') || l.contains('▲') || l.contains('^'))
        .unwrap_or_else(|| panic!("no caret line in\n{out}"));
    let source = out.lines().find(|l| l.contains("update = \"tmx\"")).unwrap();
    let col = |l: &str, c: char| l.chars().position(|x| x == c);
    let quote = col(source, '"').unwrap();
    assert!(marker.chars().nth(quote).is_some_and(|c| c != ' '), "{source}\n{marker}");
    assert!(out.contains("unknown map"), "{out}");
    assert!(out.contains("did you mean `tm`?"), "{out}");

    // At end of file too.
    let e = parse("eof.toml", "name = \"x\"\ndescription = \"y\"\n[maps.m]\ntype = \"task")
        .unwrap_err();
    assert!(e.render().contains("eof.toml"), "{}", e.render());
}

// ---------------------------------------------------------------------------------------------
// No input makes the parser panic

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Parses `text`; an error's location must lie within the text, and rendering it must work.
fn parse_checked(text: &str, render: bool) {
    if let Err(e) = parse("fuzz.toml", text) {
        let lines = text.split('\n').count();
        assert!(e.line() >= 1 && e.line() <= lines, "{e} for {text:?}");
        assert!(e.column() >= 1);
        assert!(e.to_string().starts_with("fuzz.toml:"));
        if render {
            assert!(!e.render().is_empty());
        }
    }
}

#[test]
fn truncated_and_mutated_files_never_panic() {
    let base = format!("{FULL}\n# ü ☃\n");
    let chars: Vec<char> = base.chars().collect();
    let text_of = |cs: &[char]| cs.iter().collect::<String>();

    // Every prefix (at a char boundary).
    for (i, _) in base.char_indices() {
        parse_checked(&base[..i], i % 97 == 0);
    }

    // Single-character replacements and deletions at every position.
    const SUBSTITUTES: [char; 12] = ['"', '[', ']', '{', '}', '=', ',', '\n', '0', '9', 'x', '-'];
    for i in 0..chars.len() {
        let sub = SUBSTITUTES[i % SUBSTITUTES.len()];
        let mut cs = chars.clone();
        cs[i] = sub;
        parse_checked(&text_of(&cs), i % 101 == 0);
        let mut cs = chars.clone();
        cs.remove(i);
        parse_checked(&text_of(&cs), false);
    }

    // Random multi-edits: replace, insert, delete, duplicate or drop whole lines, swap
    // names for other names of the file.
    const WORDS: [&str; 16] = [
        "tmap",
        "smap",
        "t1",
        "s1",
        "child",
        "getter",
        "resume",
        "until",
        "expect",
        "cpu",
        "99",
        "-1",
        "\"ok\"",
        "[[step]]\n",
        "[maps.x]\n",
        "true",
    ];
    let lines: Vec<&str> = base.lines().collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..1500 {
        let text = match rng.below(3) {
            0 => {
                let mut cs = chars.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(cs.len());
                    match rng.below(3) {
                        0 => cs[at] = SUBSTITUTES[rng.below(SUBSTITUTES.len())],
                        1 => cs.insert(at, SUBSTITUTES[rng.below(SUBSTITUTES.len())]),
                        _ => {
                            cs.remove(at);
                        }
                    }
                }
                text_of(&cs)
            }
            1 => {
                let mut ls = lines.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(ls.len());
                    if rng.below(2) == 0 {
                        let dup = ls[rng.below(ls.len())];
                        ls.insert(at, dup);
                    } else if ls.len() > 1 {
                        ls.remove(at);
                    }
                }
                ls.join("\n")
            }
            _ => {
                let mut t = base.clone();
                for _ in 0..1 + rng.below(3) {
                    let from = WORDS[rng.below(WORDS.len())];
                    let to = WORDS[rng.below(WORDS.len())];
                    if let Some(pos) = t.match_indices(from).map(|(p, _)| p).nth(rng.below(4)) {
                        t.replace_range(pos..pos + from.len(), to);
                    }
                }
                t
            }
        };
        parse_checked(&text, round % 50 == 0);
    }

    // Odd inputs.
    for text in ["", "\n", "\u{feff}", "=", "[", "[[", "\"", "name", "a = 1\u{0}", "ü", "\r\n\r"] {
        parse_checked(text, true);
    }
}

#[test]
fn uptr_fields_are_for_task_maps_and_used_after_a_get() {
    let e = case("[maps.u]\ntype = \"sk\"\nuptr = true\n");
    assert_at(&e, 17, 8, "uptr = true on a map that is not task storage");

    let e = case("[programs.p]\nactions = [ { uptr = true } ]\n");
    assert_at(&e, 16, 22, "expected `uptr = true` after a `get`");

    let text = format!(
        "{HEAD}[maps.u]\ntype = \"task\"\nuptr = true\n[programs.p]\nsleepable = true\n\
         actions = [ {{ get = \"u\", owner = \"t\" }}, {{ uptr = true, expect = \"ok\" }} ]\n"
    );
    let s = parse("case.toml", &text).unwrap();
    assert!(s.maps.iter().any(|m| m.name == "u" && m.uptr));
}
