//! Ground truth: the vmalock_test module (vm-images/module) breaks locking rules on purpose in
//! a test guest, and each breaking mode must yield exactly the expected verdict (rule, task, mm)
//! while each legal twin yields none. Runs where the module is loaded (`cargo xtask vm test`);
//! elsewhere every test skips loudly.

mod common;

use common::*;
use serde_json::Value;

const TRIGGER_FILE: &str = "/sys/kernel/debug/vmalock_test/trigger";

/// The modes this kernel's build of the module supports: (mode, rule id or "legal").
fn modes(test: &str) -> Option<Vec<(String, String)>> {
    if !can_trace(test) {
        return None;
    }
    match std::fs::read_to_string(TRIGGER_FILE) {
        Ok(text) => Some(
            text.lines()
                .filter_map(|l| l.split_once(' ').map(|(m, r)| (m.trim().to_string(), r.trim().to_string())))
                .collect(),
        ),
        Err(_) => {
            skip(test, "the vmalock_test module is not loaded (runs in `cargo xtask vm test` guests)");
            None
        }
    }
}

fn trigger_bin() -> String {
    std::env::var("VMALOCK_TRIGGER_BIN").unwrap_or_else(|_| "/bin/vmalock-trigger".into())
}

struct Outcome {
    /// Verdict lines from `vmalock check` of the recording.
    verdicts: Vec<String>,
    /// `vmalock check --explain` of the recording: each verdict with its events and stack.
    explained: String,
    /// The triggering process.
    pid: u64,
    /// Its mm after exec: the mm its exit_mmap() write-locks at the end.
    mm: Option<String>,
}

/// How long the trigger lingers before and after its mode, and how often vmalock snapshots its
/// VMAs meanwhile: several snapshots on each side of the mode (TCG guests are slow).
const LINGER_MS: u32 = 400;
const SNAPSHOT_MS: &str = "50";

/// Records `vmalock-trigger MODE` from birth to exit and checks the recording.
fn run_mode(mode: &str) -> Outcome {
    trace_mode("record", mode)
}

/// `vmalock SUBCOMMAND -o TRACE` (record, or a default run) of `vmalock-trigger MODE` from
/// birth to exit, and the check of its trace.
fn trace_mode(subcommand: &str, mode: &str) -> Outcome {
    let (_d, trace) = tmp(&format!("{mode}.jsonl"));
    let cmd = format!("{} -l {LINGER_MS} {mode}", trigger_bin());
    let rec = run(&[subcommand, "--snapshot-ms", SNAPSHOT_MS, "-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(rec.status.success(), "{subcommand} of {mode} failed");
    let stderr = String::from_utf8_lossy(&rec.stderr);
    assert!(stderr.contains("command exited with status 0"), "the mode itself failed: {stderr}");
    let lines = lines(&trace);
    let pid = lines[0]["filter"]["tgid"].as_u64().unwrap();
    let evs = events(&lines);
    let mm = evs
        .iter()
        .rev()
        .find(|e: &&&Value| e["kind"] == "mmap_lock_acquired" && e["write"] == true && e["tgid"].as_u64() == Some(pid))
        .map(|e| e["mm"].as_str().unwrap().to_string());
    let check = run(&["check", trace.to_str().unwrap()]);
    // lock-order verdicts are followed by their indented dependency chain.
    let verdicts: Vec<String> = String::from_utf8_lossy(&check.stdout).lines().filter(|l| l.starts_with("VIOLATION ")).map(str::to_string).collect();
    assert_eq!(check.status.code(), Some(if verdicts.is_empty() { 0 } else { 1 }));
    let explained = String::from_utf8_lossy(&run(&["check", "--explain", trace.to_str().unwrap()]).stdout).into_owned();
    Outcome { verdicts, explained, pid, mm }
}

fn assert_one_balance_verdict(mode: &str, texts: &[&str]) {
    let o = run_mode(mode);
    assert_eq!(o.verdicts.len(), 1, "{mode}: exactly one verdict expected, got {:#?}", o.verdicts);
    let v = &o.verdicts[0];
    assert!(v.starts_with("VIOLATION mmap-lock-balance: "), "{v}");
    assert!(texts.iter().any(|t| v.contains(t)), "{mode}: unexpected verdict {v}");
    assert!(v.contains(&format!("task {}/{} ", o.pid, o.pid)), "{mode}: wrong task in {v}");
    let mm = o.mm.expect("the trigger's exit_mmap write-locks its mm");
    assert!(v.contains(&format!("mm {mm} ")), "{mode}: expected mm {mm} in {v}");
}

#[test]
fn mmap_release_unheld_is_one_balance_verdict_for_the_task_and_mm() {
    if modes("mmap_release_unheld_is_one_balance_verdict_for_the_task_and_mm").is_none() {
        return;
    }
    assert_one_balance_verdict("mmap-release-unheld", &["mmap_lock released for read without being held"]);
}

#[test]
fn mmap_hold_to_exit_is_one_balance_verdict_for_the_task_and_mm() {
    if modes("mmap_hold_to_exit_is_one_balance_verdict_for_the_task_and_mm").is_none() {
        return;
    }
    // 6.15+ traces sched_process_exit before exit_mm(): "exited holding". Older kernels run
    // exit_mmap() first, whose mmap_write_lock then lands on the leaked read hold.
    assert_one_balance_verdict(
        "mmap-hold-to-exit",
        &["task exited holding mmap_lock for read", "mmap_lock taken for write while this task already holds it for read"],
    );
}

/// The verdicts of a default `run` of MODE (balanced mmap_lock pairs folded in the kernel),
/// with `extra` options.
fn default_run_verdicts(mode: &str, extra: &[&str]) -> Vec<String> {
    let cmd = format!("{} -l {LINGER_MS} {mode}", trigger_bin());
    let args: Vec<&str> = ["run"].into_iter().chain(extra.iter().copied()).chain(["-c", cmd.as_str()]).collect();
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command exited with status 0"), "the mode itself failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("VIOLATION ")).map(str::to_string).collect()
}

/// Folding balanced pairs in the kernel must not cost a verdict: a leaked or unheld mmap_lock
/// is reported by a default run exactly as by `record` + `check`, and the legal twin is silent.
#[test]
fn balance_verdicts_survive_folding_in_a_default_run() {
    if modes("balance_verdicts_survive_folding_in_a_default_run").is_none() {
        return;
    }
    for (mode, texts) in [
        ("mmap-release-unheld", &["mmap_lock released for read without being held"][..]),
        (
            "mmap-hold-to-exit",
            &["task exited holding mmap_lock for read", "mmap_lock taken for write while this task already holds it for read"][..],
        ),
    ] {
        let v = default_run_verdicts(mode, &[]);
        assert_eq!(v.len(), 1, "{mode}: exactly one verdict expected from a default run, got {v:#?}");
        assert!(v[0].starts_with("VIOLATION mmap-lock-balance: "), "{}", v[0]);
        assert!(texts.iter().any(|t| v[0].contains(t)), "{mode}: unexpected verdict {}", v[0]);
    }
    let v = default_run_verdicts("mmap-release-held", &[]);
    assert!(v.is_empty(), "mmap-release-held: no verdict expected, got {v:#?}");
}

#[test]
fn every_legal_twin_yields_no_verdict() {
    let Some(modes) = modes("every_legal_twin_yields_no_verdict") else { return };
    let twins: Vec<&String> = modes.iter().filter(|(_, r)| r == "legal").map(|(m, _)| m).collect();
    assert!(!twins.is_empty(), "the module lists no legal twins: {modes:?}");
    for m in twins {
        let o = run_mode(m);
        assert!(o.verdicts.is_empty(), "legal twin {m} gave {:#?}", o.verdicts);
    }
}

/// Breaking modes vmalock cannot observe, the rule each breaks, and why. Each is reported as a
/// loud skip by its own test, never counted as checked.
const NOT_OBSERVABLE: &[(&str, &str, &str)] = &[
    (
        "mmap-then-i_rwsem",
        "lock-order",
        "the lock is the debugfs trigger inode's i_rwsem, and vmalock learns i_rwsem addresses only from the files VMAs map: no VMA of the process maps the trigger file in this mode",
    ),
];

fn not_observable(mode: &str) -> bool {
    NOT_OBSERVABLE.iter().any(|(n, _, _)| *n == mode)
}

/// What `vmalock probe --json` says this kernel allows.
fn capabilities() -> Value {
    serde_json::from_slice(&run(&["probe", "--json"]).stdout).expect("vmalock probe --json")
}

/// `caps` (from [`capabilities`]) does not call `rule` "not applicable" on this kernel.
fn rule_applies(caps: &Value, rule: &str) -> bool {
    !caps["rules"][rule].as_str().unwrap_or("").starts_with("not applicable")
}

/// The rules the VMA probes and snapshots check (all but mmap-lock-balance and lock-order).
fn is_vma_rule(rule: &str) -> bool {
    rule != "legal" && rule != "mmap-lock-balance" && rule != "lock-order" && vmalock::model::rule(rule).is_some_and(|r| r.implemented)
}

#[test]
fn every_breaking_vma_mode_is_reported_with_its_rule_task_mm_and_stack() {
    let test = "every_breaking_vma_mode_is_reported_with_its_rule_task_mm_and_stack";
    let Some(modes) = modes(test) else { return };
    // What `vmalock probe` says of each rule here: a mode whose rule does not apply to this
    // kernel (6.1 has no per-VMA locks) must give no verdict of it, rather than a silent pass.
    let caps = capabilities();
    let applies = |rule: &str| rule_applies(&caps, rule);
    type Modes<'a> = Vec<&'a (String, String)>;
    let (breaking, not_applicable): (Modes, Modes) =
        modes.iter().filter(|(m, r)| is_vma_rule(r) && !not_observable(m)).partition(|(_, r)| applies(r));
    for (mode, rule) in &not_applicable {
        let o = run_mode(mode);
        assert!(o.verdicts.iter().all(|v| !v.contains(&format!("VIOLATION {rule}:"))), "{mode}: {rule} does not apply here, yet {:#?}", o.verdicts);
    }
    if breaking.is_empty() {
        skip(test, "no VMA rule applies to this kernel (no per-VMA locks), so no mode can break one");
        return;
    }
    for (mode, rule) in breaking {
        let o = run_mode(mode);
        assert!(!o.verdicts.is_empty(), "{mode}: expected a {rule} verdict, got none");
        let mm = o.mm.clone().expect("the trigger's exit_mmap write-locks its mm");
        for v in &o.verdicts {
            assert!(v.starts_with(&format!("VIOLATION {rule}: ")), "{mode}: expected only {rule}, got {v}");
            assert!(v.contains(&format!("task {}/{} ", o.pid, o.pid)), "{mode}: wrong task in {v}");
            assert!(v.contains(&format!("mm {mm} ")), "{mode}: expected mm {mm} in {v}");
        }
        // A verdict from a live hook carries the offending site's kernel stack, which must pass
        // through the module; a snapshot finds the damage after the fact and has no site.
        let live: Vec<&str> = o
            .explained
            .split("VIOLATION ")
            .filter(|b| b.contains("\n  rule:") && !b.lines().next().unwrap_or("").contains("seen by snapshot"))
            .collect();
        for block in &live {
            assert!(block.contains("  stack:") && block.contains("[vmalock_test]"), "{mode}: live verdict without a module frame in its stack:\n{block}");
        }
        // vma_start_write is a call the hooks see wherever the rule is live: at __vma_start_write
        // (6.13+) or, where it is inline (6.4-6.12), at its down_write of vma->vm_lock->lock.
        // (The other modes flip a flag or take a lock no function boundary marks: snapshot only.)
        if *mode == "vma-write-under-mmap-read" && caps["rules"][rule.as_str()].as_str().unwrap_or("").starts_with("checked live") {
            assert!(!live.is_empty(), "{mode}: {rule} is live here, yet only snapshot verdicts:\n{}", o.explained);
        }
        eprintln!("{mode}: {} verdict(s), {} live with module stack", o.verdicts.len(), live.len());
    }
}

/// A default run keeps in the kernel the VMA events and page walks whose facts show them legal
/// (emit.rs `keep_legal`, vma.rs `walk_legal`, each a reading of a rule's conditions): it must
/// still report every breaking mode's rule, as `record` and `check` do.
#[test]
fn every_breaking_vma_mode_is_reported_by_a_default_run_too() {
    let test = "every_breaking_vma_mode_is_reported_by_a_default_run_too";
    let Some(modes) = modes(test) else { return };
    let caps = capabilities();
    let applies = |rule: &str| rule_applies(&caps, rule);
    let breaking: Vec<&(String, String)> = modes.iter().filter(|(m, r)| is_vma_rule(r) && !not_observable(m) && applies(r)).collect();
    if breaking.is_empty() {
        skip(test, "no VMA rule applies to this kernel (no per-VMA locks), so no mode can break one");
        return;
    }
    for (mode, rule) in breaking {
        // Snapshots as often as `run_mode`'s, for the modes only a snapshot can see.
        let v = default_run_verdicts(mode, &["--snapshot-ms", SNAPSHOT_MS]);
        assert!(v.iter().any(|l| l.starts_with(&format!("VIOLATION {rule}: "))), "{mode}: a default run did not report {rule}: {v:#?}");
        eprintln!("{mode}: reported by a default run ({} verdict(s))", v.len());
    }
}

#[test]
fn modes_of_rules_not_implemented_yet_run_without_false_verdicts() {
    let test = "modes_of_rules_not_implemented_yet_run_without_false_verdicts";
    let Some(modes) = modes(test) else { return };
    let implemented: Vec<&str> = vmalock::model::RULES.iter().filter(|r| r.implemented).map(|r| r.id).collect();
    // lock-order modes have their own test (lock_order_modes_...).
    let pending: Vec<&(String, String)> =
        modes.iter().filter(|(_, r)| r != "legal" && r != "lock-order" && !implemented.contains(&r.as_str())).collect();
    for (m, _) in &pending {
        // The mode really ran (the trigger exited 0) and breaks nothing the implemented rules see.
        let o = run_mode(m);
        assert!(o.verdicts.is_empty(), "{m} gave {:#?}", o.verdicts);
    }
    if !pending.is_empty() {
        let rules: Vec<&str> = pending.iter().map(|(_, r)| r.as_str()).collect();
        skip(test, &format!("verdicts for {rules:?} are checked once those rules exist (the lock-order issue)"));
    }
}

#[test]
fn modes_vmalock_cannot_observe_are_named_and_skipped() {
    let test = "modes_vmalock_cannot_observe_are_named_and_skipped";
    let Some(modes) = modes(test) else { return };
    let listed: Vec<&(&str, &str, &str)> = NOT_OBSERVABLE.iter().filter(|(n, _, _)| modes.iter().any(|(m, _)| m == n)).collect();
    if listed.is_empty() {
        skip(test, "this kernel's module lists none of the modes vmalock cannot observe");
        return;
    }
    for (mode, rule, _) in &listed {
        // It runs, and breaks nothing else.
        let o = run_mode(mode);
        assert!(o.verdicts.iter().all(|v| v.starts_with(&format!("VIOLATION {rule}"))), "{mode}: {:#?}", o.verdicts);
    }
    let why: Vec<String> = listed.iter().map(|(m, _, w)| format!("{m}: {w}")).collect();
    skip(test, &format!("not observable: {}", why.join("; ")));
}

/// lock-order modes vmalock observes: (mode, its legal twin, what the verdict must say, the lock
/// class it needs observed). Breaking modes it cannot observe are in NOT_OBSERVABLE.
const LOCK_ORDER_MODES: &[(&str, &str, &str, &str)] = &[(
    "i_mmap-then-mmap",
    "mmap-then-i_mmap",
    "VIOLATION lock-order: mmap_lock taken for read while holding i_mmap_rwsem (held for read)",
    "i_mmap_rwsem",
)];

#[test]
fn lock_order_modes_are_reported_with_their_classes_and_stacks() {
    let test = "lock_order_modes_are_reported_with_their_classes_and_stacks";
    let Some(modes) = modes(test) else { return };
    // The unobservable ones are skipped loudly by modes_vmalock_cannot_observe_are_named_and_skipped.
    let listed: Vec<&String> = modes.iter().filter(|(m, r)| r == "lock-order" && !not_observable(m)).map(|(m, _)| m).collect();
    if listed.is_empty() {
        skip(test, "this kernel's module lists no lock-order modes vmalock can observe");
        return;
    }
    let caps = capabilities();
    let mut skipped = Vec::new();
    for m in listed {
        let (_, twin, expect, class) =
            LOCK_ORDER_MODES.iter().find(|(n, ..)| n == m).unwrap_or_else(|| panic!("lock-order mode {m} has no expectation here"));
        let how = caps["lock_order_classes"][class].as_str().unwrap_or("unavailable");
        if how.starts_with("unavailable") || how.starts_with("not applicable") {
            let o = run_mode(m);
            assert!(o.verdicts.iter().all(|v| v.starts_with("VIOLATION lock-order")), "{m}: {:#?}", o.verdicts);
            skipped.push(format!("{m}: {class} is not observed on this kernel ({how})"));
            continue;
        }
        // The legal twin takes the same two locks in the kernel's order: silence, with the class
        // observed, so the verdict below comes from the order and not from the locks alone.
        assert!(modes.iter().any(|(t, r)| t == twin && r == "legal"), "the module lists {m} but not its legal twin {twin}: {modes:?}");
        let o = run_mode(twin);
        assert!(o.verdicts.is_empty(), "legal twin {twin} of {m} gave {:#?}", o.verdicts);
        // A default run walks the stack of one acquisition per lock chain a second (locks.rs
        // chain_stack_id): the module's inverted order is a chain of its own, so both sides
        // of its edge still have their stacks there, as in a recording.
        for sub in ["record", "run"] {
            let o = trace_mode(sub, m);
            assert!(o.verdicts.iter().all(|v| v.starts_with("VIOLATION lock-order: ")), "{m} ({sub}): only lock-order expected, got {:#?}", o.verdicts);
            let v = o.verdicts.iter().find(|v| v.starts_with(expect)).unwrap_or_else(|| panic!("{m} ({sub}): expected {expect:?}, got {:#?}", o.verdicts));
            assert!(v.contains(&format!("task {}/{} ", o.pid, o.pid)), "{m} ({sub}): wrong task in {v}");
            // The explanation shows the edge with both acquisitions' stacks, through the module.
            let block = o.explained.split("VIOLATION ").find(|b| b.starts_with(&expect["VIOLATION ".len()..])).expect("explained verdict");
            assert!(block.contains("contradicts: mm/rmap.c"), "{m} ({sub}):\n{block}");
            for side in ["held at:\n", "taken at:\n"] {
                assert!(block.contains(side), "{m} ({sub}): no stack {side:?} in\n{block}");
            }
            assert!(block.contains("[vmalock_test]"), "{m} ({sub}): no module frame in\n{block}");
            eprintln!("{m} ({sub}): {} verdict(s):\n{}", o.verdicts.len(), o.verdicts.join("\n"));
        }
    }
    if !skipped.is_empty() {
        skip(test, &format!("not observable: {}", skipped.join("; ")));
    }
}
