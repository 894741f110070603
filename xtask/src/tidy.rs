//! Tidy tests: repository-wide style rules, run by `cargo test -p xtask`.
//!
//! Each rule is a pure function `check_xxx(path, text) -> Vec<String>` that returns one
//! `path:line: message` string per offence, so it can be tested on in-memory fixtures. Each
//! rule also has one `#[test]` that walks the repository (skipping `target/` and `.git/`),
//! applies the rule to the files it covers, and fails listing *every* offence it found.
//!
//! Source files are first split into lines by a small lexer ([`lex`]) that separates code from
//! comments and blanks out the contents of string and char literals, so that a needle quoted in
//! a string (such as this file's own fixtures) or mentioned in prose is never an offence.

use std::fs;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Which files a rule covers

/// The crates that must reach shared memory only through `bpfls-sync`.
const CORE_CRATES: [&str; 4] =
    ["crates/rcu", "crates/mem_alloc", "crates/local_storage", "crates/kernel"];

/// `crates/<core>/src/**.rs`.
fn is_core_src(path: &str) -> bool {
    path.ends_with(".rs") && CORE_CRATES.iter().any(|c| path.starts_with(&format!("{c}/src/")))
}

/// Any file of a core crate.
fn is_core_crate_file(path: &str) -> bool {
    CORE_CRATES.iter().any(|c| path.starts_with(&format!("{c}/")))
}

/// `crates/sync/src/**.rs` or a core crate's `src/**.rs`.
fn is_sync_or_core_src(path: &str) -> bool {
    (path.starts_with("crates/sync/src/") && path.ends_with(".rs")) || is_core_src(path)
}

/// Kernel-crate source files not yet held to [`check_public_doc_examples`], each with the
/// reason. The goal is an empty list: remove a file once its public items have examples.
const DOC_EXAMPLE_EXEMPT: &[&str] = &[];

/// `crates/kernel/src/**.rs` (the `bpfls-kernel` crate is the project's public face), less
/// [`DOC_EXAMPLE_EXEMPT`].
fn is_doc_example_src(path: &str) -> bool {
    path.starts_with("crates/kernel/src/")
        && path.ends_with(".rs")
        && !DOC_EXAMPLE_EXEMPT.contains(&path)
}

/// `crates/*/tests/loom_*.rs`.
fn is_loom_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["crates", _, "tests", file] if file.starts_with("loom_") && file.ends_with(".rs"))
}

/// The kernel facade's integration tests, which state the semantics era they assert (C15).
fn is_kernel_test(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["crates", "kernel", "tests", file] if file.ends_with(".rs"))
}

// ---------------------------------------------------------------------------------------------
// Lexing

/// One source line, split into code and comment.
#[derive(Debug, Default)]
struct Line {
    /// The code on the line, without comments and with literal contents blanked out (a string
    /// literal keeps its quotes, a char literal becomes `' '`).
    code: String,
    /// The comment text on the line (`//...` including the slashes, and block-comment text).
    comment: String,
}

impl Line {
    /// A line with a comment and no code.
    fn is_comment(&self) -> bool {
        self.code.trim().is_empty() && !self.comment.trim().is_empty()
    }

    /// A line whose code is an attribute (`#[...]` / `#![...]`).
    fn is_attribute(&self) -> bool {
        let code = self.code.trim_start();
        code.starts_with("#[") || code.starts_with("#![")
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits Rust source into [`Line`]s. Handles `//` and nested `/* */` comments, string and
/// byte-string literals with escapes, raw strings (`r#"..."#`, `br"..."`), char literals and
/// lifetimes. There is exactly one `Line` per `\n`-separated line of `text`.
fn lex(text: &str) -> Vec<Line> {
    enum State {
        Code,
        Block(u32),
        Str,
        Raw(usize),
    }
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut lines = Vec::new();
    let mut line = Line::default();
    let mut state = State::Code;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            lines.push(std::mem::take(&mut line));
            i += 1;
            continue;
        }
        match state {
            State::Code => {
                let prev_ident = i > 0 && is_ident_char(chars[i - 1]);
                if c == '/' && at(i + 1) == '/' {
                    while i < chars.len() && chars[i] != '\n' {
                        line.comment.push(chars[i]);
                        i += 1;
                    }
                    continue;
                }
                if c == '/' && at(i + 1) == '*' {
                    line.comment.push_str("/*");
                    state = State::Block(1);
                    i += 2;
                    continue;
                }
                if c == '"' {
                    line.code.push('"');
                    state = State::Str;
                    i += 1;
                    continue;
                }
                if !prev_ident && (c == 'r' || (c == 'b' && at(i + 1) == 'r')) {
                    let mut j = if c == 'r' { i + 1 } else { i + 2 };
                    let mut hashes = 0;
                    while at(j) == '#' {
                        hashes += 1;
                        j += 1;
                    }
                    if at(j) == '"' {
                        line.code.push('"');
                        state = State::Raw(hashes);
                        i = j + 1;
                        continue;
                    }
                }
                if c == '\'' {
                    if at(i + 1) == '\\' {
                        // An escaped char literal: '\n', '\'', '\u{..}'.
                        let mut j = i + 3;
                        while j < chars.len() && chars[j] != '\'' && chars[j] != '\n' {
                            j += 1;
                        }
                        line.code.push_str("' '");
                        i = (j + 1).min(chars.len());
                        continue;
                    }
                    if at(i + 1) != '\n' && at(i + 2) == '\'' {
                        line.code.push_str("' '");
                        i += 3;
                        continue;
                    }
                    // A lifetime or label.
                }
                line.code.push(c);
                i += 1;
            }
            State::Block(depth) => {
                if c == '*' && at(i + 1) == '/' {
                    line.comment.push_str("*/");
                    state = if depth == 1 { State::Code } else { State::Block(depth - 1) };
                    i += 2;
                } else if c == '/' && at(i + 1) == '*' {
                    line.comment.push_str("/*");
                    state = State::Block(depth + 1);
                    i += 2;
                } else {
                    line.comment.push(c);
                    i += 1;
                }
            }
            State::Str => {
                if c == '\\' && at(i + 1) != '\n' {
                    i += 2;
                } else if c == '"' {
                    line.code.push('"');
                    state = State::Code;
                    i += 1;
                } else {
                    i += 1;
                }
            }
            State::Raw(hashes) => {
                if c == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    line.code.push('"');
                    state = State::Code;
                    i += 1 + hashes;
                } else {
                    i += 1;
                }
            }
        }
    }
    lines.push(line);
    lines
}

/// Whether `code` contains `word` starting at a word boundary.
fn find_word(code: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = code[from..].find(word) {
        let start = from + pos;
        if !code[..start].chars().next_back().is_some_and(is_ident_char) {
            return Some(start);
        }
        from = start + word.len();
    }
    None
}

/// Strips a leading `pub` / `pub(...)` from `code`.
fn strip_visibility(code: &str) -> &str {
    let code = code.trim_start();
    if let Some(rest) = code.strip_prefix("pub(")
        && let Some(end) = rest.find(')')
    {
        return rest[end + 1..].trim_start();
    }
    code.strip_prefix("pub ").map(str::trim_start).unwrap_or(code)
}

/// The index of the first line of a trailing test module (`#[cfg(..test..)]` followed within
/// two lines by `mod tests`, or a bare `mod tests {`), or `lines.len()` if there is none.
fn test_module_start(lines: &[Line]) -> usize {
    let is_mod_tests = |l: &Line| strip_visibility(&l.code).starts_with("mod tests");
    for (i, line) in lines.iter().enumerate() {
        let code = line.code.trim();
        if code.starts_with("#[cfg(") && find_word(code, "test").is_some() {
            if lines[i + 1..].iter().take(2).any(is_mod_tests) {
                return i;
            }
        } else if code.starts_with("mod tests {") {
            return i;
        }
    }
    lines.len()
}

fn offence(path: &str, index: usize, message: &str) -> String {
    format!("{path}:{}: {message}", index + 1)
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Core crates reach atomics, locks and threads only through `bpfls-sync`, so that
/// `--cfg loom` / `--cfg shuttle` switches all of them.
fn check_no_std_sync(path: &str, text: &str) -> Vec<String> {
    const NEEDLES: [&str; 4] = ["std::sync", "std::thread", "core::sync::atomic", "core::sync"];
    let mut out = Vec::new();
    for (i, line) in lex(text).iter().enumerate() {
        let code = &line.code;
        let named = NEEDLES.iter().find(|n| code.contains(*n)).copied().or_else(|| {
            // `use std::{sync::Arc, thread};`
            let group = code.contains("std::{") || code.contains("core::{");
            let names = find_word(code, "sync").is_some() || find_word(code, "thread").is_some();
            (group && names).then_some("std::{sync|thread}")
        });
        if let Some(needle) = named {
            out.push(offence(
                path,
                i,
                &format!(
                    "core crates must not name `{needle}`; use `bpfls_sync` (crates/sync) instead"
                ),
            ));
        }
    }
    out
}

/// No `static` atomics anywhere under `crates/` (loom cannot reset them between model
/// iterations, and they make simulated kernels share state); in core crates also no
/// `OnceLock` / `LazyLock` / `lazy_static!` globals. `core` says whether `path` is in a core
/// crate.
fn check_no_static_atomics(path: &str, text: &str, core: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in lex(text).iter().enumerate() {
        let code = strip_visibility(&line.code);
        if core && find_word(code, "lazy_static").is_some() {
            out.push(offence(path, i, "no `lazy_static!` globals in core crates"));
            continue;
        }
        let Some(rest) = code.strip_prefix("static ") else {
            continue;
        };
        let Some((_, ty)) = rest.split_once(':') else {
            continue;
        };
        let ty = ty.split(['=', ';']).next().unwrap_or(ty);
        if ty.contains("Atomic") {
            out.push(offence(
                path,
                i,
                "no `static` atomics: put the state in a struct the caller owns",
            ));
        } else if core && (ty.contains("OnceLock") || ty.contains("LazyLock")) {
            out.push(offence(path, i, "no `OnceLock` / `LazyLock` globals in core crates"));
        }
    }
    out
}

const UNSAFE_BLOCK: &str = concat!("unsafe", " {");
const UNSAFE_BLOCK_TIGHT: &str = concat!("unsafe", "{");
const UNSAFE_IMPL: &str = concat!("unsafe", " impl");
const UNSAFE_FN: &str = concat!("unsafe", " fn");
const UNSAFE_EXTERN: &str = concat!("unsafe", " extern");
const SAFETY_TAG: &str = concat!("SAFETY", ":");
const SAFETY_SECTION: &str = concat!("# ", "Safety");

/// Every `unsafe` block and `unsafe impl` has a `// SAFETY:` comment directly above (in the
/// contiguous run of comment and attribute lines) or before it on the same line; every
/// `unsafe fn` has a `/// # Safety` section in its doc comment.
fn check_unsafe_comments(path: &str, text: &str) -> Vec<String> {
    let raw: Vec<&str> = text.split('\n').collect();
    let lines = lex(text);
    let mut out = Vec::new();
    // The comments of the contiguous comment / attribute lines directly above line `i`.
    let comments_above = |i: usize| {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.is_comment() || l.is_attribute())
            .map(|l| l.comment.as_str())
    };
    for (i, line) in lines.iter().enumerate() {
        let code = line.code.as_str();
        let block =
            [UNSAFE_BLOCK, UNSAFE_BLOCK_TIGHT, UNSAFE_IMPL].iter().find_map(|n| find_word(code, n));
        if block.is_some() {
            let raw_line = raw.get(i).copied().unwrap_or("");
            let same_line = match (raw_line.find(SAFETY_TAG), raw_line.rfind("unsafe")) {
                (Some(tag), Some(kw)) => tag < kw,
                _ => false,
            };
            if !same_line && !comments_above(i).any(|c| c.contains(SAFETY_TAG)) {
                let what = if find_word(code, UNSAFE_IMPL).is_some() {
                    "`unsafe impl`"
                } else {
                    "`unsafe` block"
                };
                out.push(offence(
                    path,
                    i,
                    &format!("{what} without a `// {SAFETY_TAG}` comment directly above"),
                ));
            }
        }
        let mut decl = strip_visibility(code);
        for qualifier in ["const ", "async ", "default "] {
            decl = decl.strip_prefix(qualifier).map(str::trim_start).unwrap_or(decl);
        }
        let is_unsafe_fn = decl.starts_with(UNSAFE_FN)
            || (decl.starts_with(UNSAFE_EXTERN) && find_word(decl, "fn").is_some());
        if is_unsafe_fn
            && !comments_above(i)
                .any(|c| c.trim_start().starts_with("///") && c.contains(SAFETY_SECTION))
        {
            out.push(offence(
                path,
                i,
                &format!("`unsafe fn` without a `/// {SAFETY_SECTION}` section in its doc comment"),
            ));
        }
    }
    out
}

/// Every non-`Relaxed` ordering in `crates/sync` and the core crates has an `// ORDERING:`
/// comment (naming the paired access) on the same line or within the 8 lines above. A
/// trailing `#[cfg(test)] mod tests` is not checked.
fn check_ordering_comments(path: &str, text: &str) -> Vec<String> {
    const NEEDLES: [&str; 4] =
        ["Ordering::Acquire", "Ordering::Release", "Ordering::AcqRel", "Ordering::SeqCst"];
    const TAG: &str = concat!("ORDERING", ":");
    const WINDOW: usize = 8;
    let lines = lex(text);
    let end = test_module_start(&lines);
    let mut out = Vec::new();
    for i in 0..end {
        let Some(needle) = NEEDLES.iter().find(|n| lines[i].code.contains(*n)) else {
            continue;
        };
        let start = i.saturating_sub(WINDOW);
        if !lines[start..=i].iter().any(|l| l.comment.contains(TAG)) {
            out.push(offence(
                path,
                i,
                &format!("`{needle}` without an `// {TAG}` comment (naming the paired access) in the {WINDOW} lines above"),
            ));
        }
    }
    out
}

/// A loom test file is compiled only under `--cfg loom`: its first item is `#![cfg(loom)]`.
fn check_loom_file(path: &str, text: &str) -> Vec<String> {
    const ATTR: &str = "#![cfg(loom)]";
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line == ATTR {
            return Vec::new();
        }
        return vec![offence(path, i, &format!("loom test files must start with `{ATTR}`"))];
    }
    vec![offence(path, 0, &format!("loom test files must start with `{ATTR}` (file has no code)"))]
}

/// Check C15: a kernel test states the era its expectations hold for, in its module docs:
/// a `//! Era: ...` line naming a `Profile` (today only `bpf_ma`).
fn check_era_declared(path: &str, text: &str) -> Vec<String> {
    const ERAS: &[&str] = &["bpf_ma"];
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("//! Era:") {
            if ERAS.iter().any(|e| rest.trim_start().starts_with(e)) {
                return Vec::new();
            }
            return vec![offence(
                path,
                0,
                &format!("unknown era in `{}` (known: {ERAS:?})", line.trim()),
            )];
        }
    }
    vec![offence(path, 0, "kernel tests must state their era: a `//! Era: bpf_ma` line (C15)")]
}

/// The name of the public item whose declaration starts `code`, for the kinds that must carry
/// a doc example: `pub` (not `pub(...)`) `fn`, `struct`, `enum`, `trait`, `const` and `type`,
/// after any of the qualifiers `const` (of a `const fn`), `async`, `unsafe`, `extern "abi"`.
fn public_item(code: &str) -> Option<&str> {
    const KINDS: [&str; 6] = ["fn", "struct", "enum", "trait", "const", "type"];
    let rest = code.trim_start().strip_prefix("pub ")?;
    let mut words = rest.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let qualifier = match word {
            "async" | "unsafe" | "extern" | "\"\"" => true,
            // `pub const fn`, `pub const unsafe fn`; otherwise a `pub const` item.
            "const" => {
                words.peek().is_some_and(|w| ["fn", "async", "unsafe", "extern"].contains(w))
            }
            _ => false,
        };
        if qualifier {
            continue;
        }
        if !KINDS.contains(&word) {
            return None;
        }
        let name = words.next().unwrap_or("");
        let end = name.find(|c: char| !is_ident_char(c)).unwrap_or(name.len());
        return Some(&name[..end]);
    }
    None
}

/// Whether a fenced code block with this info string (the text after the opening ```) is a
/// doctest that runs: a Rust block (no info, `rust`, or only rustdoc attributes that still
/// run it) not marked `compile_fail`, `no_run` or `ignore`. A `text` or `toml` block is no
/// doctest at all.
fn is_runnable_fence(info: &str) -> bool {
    info.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).all(|w| {
        matches!(w, "rust" | "should_panic" | "test_harness" | "standalone_crate")
            || w.starts_with("edition")
    })
}

/// Whether doc-comment text (one entry per line, after the `///`) has a fenced block that
/// [`is_runnable_fence`]. A `compile_fail` block is welcome beside one, but is not one.
fn has_runnable_example(doc: &[&str]) -> bool {
    let mut open = false;
    for line in doc {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        if !open && is_runnable_fence(info) {
            return true;
        }
        open = !open;
    }
    false
}

/// The text of a doc-comment line (after its `///`), or `None` if `line` is not one.
fn doc_text(line: &Line) -> Option<&str> {
    let comment = line.comment.trim_start();
    let text = comment.strip_prefix("///")?;
    (line.is_comment() && !text.starts_with('/')).then_some(text)
}

/// Whether `code` begins an `impl` block (`impl`, `unsafe impl`, `default impl`).
fn is_impl_header(code: &str) -> bool {
    let mut code = code.trim_start();
    for qualifier in ["unsafe ", "default "] {
        code = code.strip_prefix(qualifier).map(str::trim_start).unwrap_or(code);
    }
    code.strip_prefix("impl").is_some_and(|r| r.starts_with(['<', ' ', '{', '!']) || r.is_empty())
}

/// Whether an `impl` header (all its lines up to the `{`) implements a trait: it has the word
/// `for`, other than in a higher-ranked bound (`for<'a>`).
fn is_trait_impl(header: &str) -> bool {
    let mut from = 0;
    while let Some(pos) = find_word(&header[from..], "for") {
        let after = header[from + pos + 3..].trim_start();
        let word_ends = !header[from + pos + 3..].starts_with(is_ident_char);
        if word_ends && !after.starts_with('<') {
            return true;
        }
        from += pos + 3;
    }
    false
}

/// Every public `fn`, `struct`, `enum`, `trait`, `const` and `type` (see [`public_item`]) has
/// a runnable doc example: a doc comment directly above it (attributes may sit in between)
/// with a fence that [`is_runnable_fence`]. On the item itself: a type's example does not
/// cover its methods. Items inside trait `impl` blocks (documented by the trait) and a
/// trailing `#[cfg(test)] mod tests` are not checked.
fn check_public_doc_examples(path: &str, text: &str) -> Vec<String> {
    let lines = lex(text);
    let end = test_module_start(&lines);
    let mut out = Vec::new();
    let mut depth = 0usize;
    // The header of an `impl` whose `{` is still to come, and the depth a trait impl's block
    // opened at (its items are skipped until the depth falls back to it).
    let mut impl_header: Option<String> = None;
    let mut trait_impl_at: Option<usize> = None;
    for (i, line) in lines[..end].iter().enumerate() {
        let code = line.code.trim();
        if trait_impl_at.is_none()
            && let Some(name) = public_item(code)
        {
            // The doc comment and attribute lines directly above, top to bottom.
            let above =
                lines[..i].iter().rev().take_while(|l| l.is_attribute() || doc_text(l).is_some());
            let mut doc: Vec<&str> = above.filter_map(doc_text).collect();
            doc.reverse();
            if !has_runnable_example(&doc) {
                out.push(offence(
                    path,
                    i,
                    &format!("public item `{name}` has no runnable doc example"),
                ));
            }
        }
        if impl_header.is_none() && is_impl_header(code) {
            impl_header = Some(String::new());
        }
        if let Some(header) = &mut impl_header {
            header.push_str(code);
            header.push(' ');
            if code.contains('{') || code.ends_with(';') {
                if is_trait_impl(header) && trait_impl_at.is_none() {
                    trait_impl_at = Some(depth);
                }
                impl_header = None;
            }
        }
        for c in code.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if trait_impl_at.is_some_and(|d| depth <= d) {
            trait_impl_at = None;
        }
    }
    out
}

/// The manifest opts into the workspace lints: `[lints]` followed by `workspace = true`.
fn check_workspace_lints(path: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(header) = lines.iter().position(|l| *l == "[lints]") else {
        return vec![offence(path, 0, "missing `[lints]` with `workspace = true`")];
    };
    let section = lines[header + 1..].iter().take_while(|l| !l.starts_with('['));
    let workspace = section
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.replace([' ', '\t'], "") == "workspace=true");
    if workspace {
        Vec::new()
    } else {
        vec![offence(path, header, "`[lints]` must say `workspace = true`")]
    }
}

/// The toolchain is pinned to an exact release.
fn check_toolchain_pinned(path: &str, text: &str) -> Vec<String> {
    const PIN: &str = r#"channel="1.95.0""#;
    let mut channel_line = 0;
    for (i, line) in text.lines().enumerate() {
        let compact = line.trim().replace([' ', '\t'], "");
        if compact == PIN {
            return Vec::new();
        }
        if compact.starts_with("channel=") {
            channel_line = i;
        }
    }
    vec![offence(path, channel_line, r#"rust-toolchain.toml must pin `channel = "1.95.0"`"#)]
}

/// `.ci/run` runs `cargo xtask ci` (on a line that is not a `#` comment).
fn check_ci_script(path: &str, text: &str) -> Vec<String> {
    let runs =
        text.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("cargo xtask ci"));
    if runs { Vec::new() } else { vec![offence(path, 0, "must run `cargo xtask ci`")] }
}

/// README.md documents `cargo xtask ci` as the test command.
fn check_readme(path: &str, text: &str) -> Vec<String> {
    if text.contains("cargo xtask ci") {
        Vec::new()
    } else {
        vec![offence(path, 0, "must document `cargo xtask ci` as the test command")]
    }
}

// ---------------------------------------------------------------------------------------------
// Walking the repository

/// Every file of the repository as `(relative path with '/', absolute path)`, sorted, skipping
/// `target/` and `.git/` directories at any depth.
fn repo_files() -> Vec<(String, std::path::PathBuf)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if name != "target" && name != ".git" {
                    walk(&path, &rel, out);
                }
            } else if kind.is_file() {
                out.push((rel, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(&crate::project_root(), "", &mut out);
    out.sort();
    out
}

/// Applies `check` to every repository file that `covers` selects.
fn check_repo(
    covers: impl Fn(&str) -> bool,
    check: impl Fn(&str, &str) -> Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, path) in repo_files() {
        if !covers(&rel) {
            continue;
        }
        // Not UTF-8 (or vanished meanwhile): not ours to judge.
        if let Ok(text) = fs::read_to_string(&path) {
            out.extend(check(&rel, &text));
        }
    }
    out
}

/// Fails listing every offence of `rule`.
fn assert_clean(rule: &str, offences: Vec<String>) {
    assert!(
        offences.is_empty(),
        "tidy rule `{rule}` found {} offence(s):\n{}\n",
        offences.len(),
        offences.join("\n")
    );
}

/// Applies a whole-file rule to `rel` if it exists; a missing file is an offence when
/// `required`.
fn check_one(rel: &str, required: bool, check: fn(&str, &str) -> Vec<String>) -> Vec<String> {
    match fs::read_to_string(crate::project_root().join(rel)) {
        Ok(text) => check(rel, &text),
        Err(_) if required => vec![format!("{rel}:1: file is missing")],
        Err(_) => Vec::new(),
    }
}

#[test]
fn no_std_sync_in_core_crates() {
    assert_clean("no_std_sync_in_core_crates", check_repo(is_core_src, check_no_std_sync));
}

#[test]
fn no_static_atomics() {
    let offences = check_repo(
        |p| p.starts_with("crates/") && p.ends_with(".rs"),
        |p, t| check_no_static_atomics(p, t, is_core_crate_file(p)),
    );
    assert_clean("no_static_atomics", offences);
}

#[test]
fn unsafe_blocks_have_safety_comments() {
    let offences = check_repo(
        |p| (p.starts_with("crates/") || p.starts_with("xtask/")) && p.ends_with(".rs"),
        check_unsafe_comments,
    );
    assert_clean("unsafe_blocks_have_safety_comments", offences);
}

#[test]
fn ordering_comments_on_non_relaxed_atomics() {
    assert_clean(
        "ordering_comments_on_non_relaxed_atomics",
        check_repo(is_sync_or_core_src, check_ordering_comments),
    );
}

#[test]
fn public_items_have_doc_examples() {
    assert_clean(
        "public_items_have_doc_examples",
        check_repo(is_doc_example_src, check_public_doc_examples),
    );
}

#[test]
fn kernel_tests_state_their_era() {
    assert_clean("kernel_tests_state_their_era", check_repo(is_kernel_test, check_era_declared));
}

#[test]
fn loom_files_are_cfg_loom() {
    assert_clean("loom_files_are_cfg_loom", check_repo(is_loom_file, check_loom_file));
}

#[test]
fn crates_use_workspace_lints() {
    let offences = check_repo(
        |p| (p.starts_with("crates/") || p.starts_with("xtask/")) && p.ends_with("/Cargo.toml"),
        check_workspace_lints,
    );
    assert_clean("crates_use_workspace_lints", offences);
}

#[test]
fn rust_toolchain_is_pinned() {
    assert_clean(
        "rust_toolchain_is_pinned",
        check_one("rust-toolchain.toml", true, check_toolchain_pinned),
    );
}

#[test]
fn ci_runs_xtask_ci() {
    let mut offences = check_one(".ci/run", true, check_ci_script);
    offences.extend(check_one("README.md", false, check_readme));
    assert_clean("ci_runs_xtask_ci", offences);
}

// ---------------------------------------------------------------------------------------------
// Every rule can fail: fixtures

mod fixtures {
    use super::*;

    fn lines_of(offences: &[String]) -> Vec<&str> {
        offences.iter().map(|o| o.split(':').nth(1).unwrap()).collect()
    }

    #[test]
    fn era_rule_wants_a_known_era_line() {
        assert!(
            check_era_declared("t.rs", "//! Tests.\n//!\n//! Era: bpf_ma (v6.4+).\n").is_empty()
        );
        assert_eq!(check_era_declared("t.rs", "//! Tests.\n#![cfg(not(loom))]\n").len(), 1);
        assert_eq!(check_era_declared("t.rs", "//! Era: rqspinlock\n").len(), 1);
        assert!(is_kernel_test("crates/kernel/tests/facade.rs"));
        assert!(!is_kernel_test("crates/rcu/tests/api.rs"));
    }

    #[test]
    fn lexer_separates_code_comments_and_literals() {
        let text = r##"let a = "std::sync // not a comment"; // real comment
let b = r#"unsafe { raw "# ;
let c = '"'; let d = '\''; fn f<'a>(x: &'a str) {}
/* block
   std::thread */ let e = 1;
let s = "multi
line std::sync";"##;
        let lines = lex(text);
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0].code.trim(), r#"let a = "";"#);
        assert_eq!(lines[0].comment, "// real comment");
        assert_eq!(lines[1].code.trim(), r#"let b = "" ;"#);
        assert_eq!(lines[2].code, r"let c = ' '; let d = ' '; fn f<'a>(x: &'a str) {}");
        assert!(lines[3].is_comment());
        assert!(lines[4].comment.contains("std::thread"));
        assert_eq!(lines[4].code.trim(), "let e = 1;");
        assert_eq!(lines[5].code, r#"let s = ""#);
        assert_eq!(lines[6].code, r#"";"#);
    }

    #[test]
    fn no_std_sync_fixtures() {
        let bad = "use std::sync::Arc;\nuse core::sync::atomic::AtomicU8;\nfn f() { std::thread::yield_now() }\nuse std::{sync::Mutex, fmt};\n";
        assert_eq!(lines_of(&check_no_std_sync("x.rs", bad)), ["1", "2", "3", "4"]);
        let clean = "//! We never name std::sync here.\nuse bpfls_sync::atomic::AtomicU64; // not std::sync\nlet s = \"std::thread\";\nuse std::{fmt, mem};\n";
        assert!(check_no_std_sync("x.rs", clean).is_empty());
    }

    #[test]
    fn no_static_atomics_fixtures() {
        let bad = "static COUNT: AtomicUsize = AtomicUsize::new(0);\npub(crate) static FLAGS: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];\n";
        assert_eq!(lines_of(&check_no_static_atomics("x.rs", bad, false)), ["1", "2"]);
        let globals = "static CFG: OnceLock<Config> = OnceLock::new();\nlazy_static! { static ref X: u32 = 1; }\n";
        assert_eq!(lines_of(&check_no_static_atomics("x.rs", globals, true)), ["1", "2"]);
        assert!(
            check_no_static_atomics("x.rs", globals, false).is_empty(),
            "OnceLock is fine outside core"
        );
        let clean = "static NAME: &str = \"AtomicUsize\";\nfn f(x: &'static AtomicUsize) {}\n// static X: AtomicUsize\nlet a = AtomicUsize::new(0);\n";
        assert!(check_no_static_atomics("x.rs", clean, true).is_empty());
    }

    #[test]
    fn unsafe_comment_fixtures() {
        let bad = r#"fn f(p: *const u8) -> u8 {
    // A comment, but not the tag.
    unsafe { *p }
}

// SAFETY: separated by a blank line does not count.

unsafe impl Send for X {}

/// Reads `p`.
pub unsafe fn g(p: *const u8) -> u8 {
    // SAFETY: the caller promises it.
    unsafe { *p }
}
"#;
        assert_eq!(lines_of(&check_unsafe_comments("x.rs", bad)), ["3", "8", "11"]);
        let clean = r#"fn f(p: *const u8) -> u8 {
    // SAFETY: `p` is valid,
    // and aligned.
    #[allow(unused_unsafe)]
    unsafe { *p }
}

// SAFETY: `X` owns its data.
unsafe impl Send for X {}

/// Reads `p`.
///
/// # Safety
///
/// `p` must be valid.
#[inline]
pub(crate) const unsafe fn g(p: *const u8) -> u8 {
    /* SAFETY: as above */ unsafe { *p }
}

fn h() {
    let s = "unsafe { not code }"; // mentions unsafe { too
}
"#;
        assert!(
            check_unsafe_comments("x.rs", clean).is_empty(),
            "{:?}",
            check_unsafe_comments("x.rs", clean)
        );
    }

    #[test]
    fn ordering_comment_fixtures() {
        let bad = "fn f(a: &AtomicU64) {\n    a.store(1, Ordering::Release);\n    // ORDERING: pairs with the Acquire in `g`.\n    a.load(Ordering::Relaxed);\n    fence(Ordering::SeqCst);\n}\n";
        // Line 2 has no tag above; line 5 has one within 8 lines.
        assert_eq!(lines_of(&check_ordering_comments("x.rs", bad)), ["2"]);
        let far =
            format!("// ORDERING: too far away.\n{}x.load(Ordering::Acquire);\n", "\n".repeat(8));
        assert_eq!(lines_of(&check_ordering_comments("x.rs", &far)), ["10"]);
        let clean = "fn f(a: &AtomicU64) {\n    // ORDERING: Release pairs with the Acquire load in `g`.\n    a.store(1, Ordering::Release);\n    a.load(Ordering::Relaxed);\n    // \"Ordering::SeqCst\" in a comment is no use.\n}\n\n#[cfg(test)]\nmod tests {\n    fn t() { a.load(Ordering::SeqCst); }\n}\n";
        assert!(check_ordering_comments("x.rs", clean).is_empty());
        let test_mod = "#[cfg(all(test, not(loom)))]\n#[allow(dead_code)]\nmod tests {\n    fn t() { a.load(Ordering::SeqCst); }\n}\n";
        assert!(check_ordering_comments("x.rs", test_mod).is_empty());
    }

    #[test]
    fn public_doc_example_fixtures() {
        let bad = r#"pub fn undocumented() {}

/// Documented, but with no example.
pub struct Prose;

/// Only a block that must not compile.
///
/// ```compile_fail
/// let x: u8 = "no";
/// ```
pub enum OnlyCompileFail {}

/// Blocks that are not run.
///
/// ```no_run
/// loop {}
/// ```
///
/// ```ignore
/// broken();
/// ```
///
/// ```text
/// not Rust
/// ```
pub trait NotRun {}

/// ```
/// assert!(true);
/// ```

pub const SEPARATED_BY_A_BLANK_LINE: u32 = 1;

impl Prose {
    // A method needs its own example, whatever its type has.
    pub const unsafe fn method(&self) {}
}

impl fmt::Display for Prose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")
    }
}

/// Not a trait impl: `for<'a>` is a higher-ranked bound.
impl<F> Holder<F> where F: for<'a> Fn(&'a u8) {
    pub type Alias = u8;
}

pub extern "C" fn callback() {}
pub async fn fetch() {}
"#;
        assert_eq!(
            lines_of(&check_public_doc_examples("x.rs", bad)),
            ["1", "4", "11", "26", "32", "36", "47", "50", "51"]
        );
        assert_eq!(
            check_public_doc_examples("x.rs", "pub fn f() {}\n"),
            ["x.rs:1: public item `f` has no runnable doc example"]
        );
        let clean = r#"/// A value.
///
/// ```
/// let x = 1;
/// assert_eq!(x, 1);
/// ```
#[derive(Debug)]
#[must_use]
pub struct Documented(u32);

impl Documented {
    /// Refused, and also shown working.
    ///
    /// ```compile_fail
    /// let x: u8 = "no";
    /// ```
    ///
    /// ```rust,should_panic
    /// panic!("runs");
    /// ```
    #[inline]
    pub fn both(&self) {}

    pub(crate) fn internal() {}
}

impl Trait for Documented {
    pub fn trait_items_are_documented_by_the_trait() {}
}

unsafe impl Send for Documented {}

/// ```edition2021
/// assert!(true);
/// ```
pub extern "C" fn callback() {}

fn private() {}
pub mod module;
pub use crate::Documented as Again;
// pub fn commented_out() {}

#[cfg(test)]
mod tests {
    pub fn helper() {}
}
"#;
        assert!(
            check_public_doc_examples("x.rs", clean).is_empty(),
            "{:?}",
            check_public_doc_examples("x.rs", clean)
        );
        assert!(is_doc_example_src("crates/kernel/src/lib.rs"));
        assert!(!is_doc_example_src("crates/kernel/tests/facade.rs"));
        assert!(!is_doc_example_src("crates/rcu/src/lib.rs"));
        for exempt in DOC_EXAMPLE_EXEMPT {
            assert!(!is_doc_example_src(exempt));
        }
    }

    #[test]
    fn loom_file_fixtures() {
        assert_eq!(lines_of(&check_loom_file("t.rs", "//! Models.\n\nuse loom::thread;\n")), ["3"]);
        assert_eq!(lines_of(&check_loom_file("t.rs", "// only a comment\n")), ["1"]);
        assert!(
            check_loom_file(
                "t.rs",
                "//! Models of RCU.\n// More.\n\n#![cfg(loom)]\nuse loom::thread;\n"
            )
            .is_empty()
        );
        assert!(is_loom_file("crates/rcu/tests/loom_gp.rs"));
        assert!(!is_loom_file("crates/rcu/tests/gp.rs"));
        assert!(!is_loom_file("crates/rcu/src/loom_gp.rs"));
    }

    #[test]
    fn workspace_lints_fixtures() {
        assert_eq!(
            lines_of(&check_workspace_lints("Cargo.toml", "[package]\nname = \"x\"\n")),
            ["1"]
        );
        let elsewhere =
            "[lints]\nrust.unsafe_code = \"deny\"\n\n[dependencies]\nworkspace = true\n";
        assert_eq!(lines_of(&check_workspace_lints("Cargo.toml", elsewhere)), ["1"]);
        assert!(
            check_workspace_lints(
                "Cargo.toml",
                "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn toolchain_fixtures() {
        assert_eq!(
            lines_of(&check_toolchain_pinned("r.toml", "[toolchain]\nchannel = \"1.95\"\n")),
            ["2"]
        );
        assert_eq!(
            check_toolchain_pinned("r.toml", "[toolchain]\nchannel = \"stable\"\n").len(),
            1
        );
        assert!(check_toolchain_pinned("r.toml", "[toolchain]\nchannel = \"1.95.0\"\n").is_empty());
    }

    #[test]
    fn ci_fixtures() {
        assert_eq!(
            check_ci_script(".ci/run", "#!/bin/sh\n# cargo xtask ci\ncargo test\n").len(),
            1
        );
        assert!(check_ci_script(".ci/run", "#!/bin/sh\nexec cargo xtask ci\n").is_empty());
        assert_eq!(check_readme("README.md", "Run `cargo test`.\n").len(), 1);
        assert!(check_readme("README.md", "Run `cargo xtask ci`.\n").is_empty());
    }

    #[test]
    fn path_selectors() {
        assert!(is_core_src("crates/rcu/src/lib.rs"));
        assert!(!is_core_src("crates/sync/src/lib.rs"));
        assert!(!is_core_src("crates/rcu/tests/loom_x.rs"));
        assert!(is_sync_or_core_src("crates/sync/src/lock.rs"));
        assert!(is_core_crate_file("crates/kernel/benches/b.rs"));
        assert!(!is_core_crate_file("crates/kernelx/src/lib.rs"));
    }
}
