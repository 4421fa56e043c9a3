//! End-to-end tests of live tracing on the machine's own kernel (mmap_lock tracepoints), as root.
//! Each skips loudly, and is counted as skipped by `cargo xtask test`, where it cannot run.
//!
//! They run one at a time (see the mutex): each attaches system-wide hooks, and a concurrent run
//! would make "no program of ours is left loaded" meaningless.

mod common;

use std::{collections::HashMap, sync::Mutex};

use common::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Independent of the model: replays one task's events with a plain stack per mm and returns
/// the first imbalance, so a bug in the model cannot hide one here. A `missed` marker says the
/// kernel skipped hits somewhere in the next `span` events: forget everything, judge nothing
/// in the span, forget again after it, and judge a release only once its pair was seen whole.
fn imbalance(events: &[&Value]) -> Option<String> {
    let mut held: HashMap<(u64, String), Vec<bool>> = HashMap::new();
    let mut trusted_from_start = true;
    let mut seen_acquire: std::collections::HashSet<(u64, String)> = Default::default();
    let mut blind = 0u64;
    for e in events {
        if e["kind"] == "missed" {
            held.clear();
            seen_acquire.clear();
            trusted_from_start = false;
            blind = e["span"].as_u64().unwrap_or(0);
            continue;
        }
        let judging = blind == 0;
        blind = blind.saturating_sub(1);
        let reset_now = !judging && blind == 0;
        let tid = e["tid"].as_u64().unwrap();
        let mm = e["mm"].as_str().unwrap_or("").to_string();
        let stack = held.entry((tid, mm.clone())).or_default();
        match e["kind"].as_str().unwrap() {
            "mmap_lock_acquired" if e["success"] == true => {
                seen_acquire.insert((tid, mm.clone()));
                let write = e["write"] == true;
                if !write && stack.last() == Some(&true) {
                    *stack.last_mut().unwrap() = false; // mmap_write_downgrade
                } else {
                    stack.push(write);
                }
            }
            "mmap_lock_released" => {
                let whole = trusted_from_start || seen_acquire.contains(&(tid, mm.clone()));
                if stack.pop() != Some(e["write"] == true) && whole && judging {
                    return Some(format!("unmatched release {e}"));
                }
            }
            "task_exit"
                if judging && held.iter().any(|((t, _), s)| *t == tid && !s.is_empty()) => {
                    return Some(format!("task {tid} exited holding"));
                }
            _ => {}
        }
        if reset_now {
            held.clear();
            seen_acquire.clear();
        }
    }
    None
}

#[test]
fn record_of_a_multithreaded_child_is_complete_and_balanced() {
    if !can_trace("record_of_a_multithreaded_child_is_complete_and_balanced") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("child.jsonl");
    let cmd = format!("{} --threads 4 --iters 150", workload());
    let out = run(&["record", "-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(out.status.success(), "record failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command exited with status 0"), "{stderr}");
    assert!(stderr.contains("lost events: 0"), "{stderr}");
    // Hits the kernel skipped (preempted inside our program, on kernels whose tracepoint probes
    // are preemptible) are all accounted for by markers in the stream.
    let missed: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("missed hook hits (kernel recursion protection): "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the summary reports missed hits");
    // Every kernel vmalock supports has tp_btf for these hooks: a fallback here is a bug (it
    // once hid a verifier rejection of the tp_btf programs).
    assert!(!stderr.contains("fallback for"), "{stderr}");
    // The daemon's own CPU while tracing: it drained and judged events, and no process can use
    // more CPU than the run's wall time on every CPU.
    let cpu: f64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("tracer CPU while tracing: "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .expect("the summary reports the tracer's CPU");
    let wall: f64 = stderr
        .lines()
        .find_map(|l| l.split(" after ").nth(1)?.strip_suffix(" s")?.parse().ok())
        .expect("the summary reports the run's duration");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(cpu > 0.0 && cpu <= wall * cpus, "tracer CPU {cpu} s over {wall} s on {cpus} CPUs");

    let lines = lines(&trace);
    let header = &lines[0];
    assert_eq!(header["type"], "header");
    let child = header["filter"]["tgid"].as_u64().expect("header names the child tgid");
    let footer = lines.last().unwrap();
    assert_eq!(footer["type"], "footer");
    assert_eq!(footer["lost_events"], 0);
    let all = stream(&lines);
    let marked: u64 = all.iter().filter(|e| e["kind"] == "missed").map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(marked, missed, "every skipped hit is marked in the stream");
    assert_eq!(footer["events"].as_u64().unwrap() as usize, all.len());
    let evs = events(&lines);
    assert!(evs.iter().all(|e| e["tgid"].as_u64() == Some(child)), "an event from another process");
    assert!(evs.iter().all(|e| e["task_new"] == true), "the -c child started after attach: every task is new");

    let count = |kind: &str, write: bool| evs.iter().filter(|e| e["kind"] == kind && e["write"] == write).count();
    // 4 threads × 150 iterations each mmap (write), mprotect (write) and munmap (write); hits
    // the kernel skipped (reported, and marked in the stream) are the only allowed shortfall.
    let missed = missed as usize;
    assert!(count("mmap_lock_acquired", true) + missed >= 3 * 4 * 150, "too few write acquisitions");
    assert!(count("mmap_lock_start", true) + missed >= 3 * 4 * 150, "record sends start_locking too");
    assert!(count("mmap_lock_released", false) > 0);
    let threads: std::collections::HashSet<_> = evs.iter().map(|e| e["tid"].as_u64().unwrap()).collect();
    assert!(threads.len() >= 5, "main thread and 4 workers, got {threads:?}");
    let exits = evs.iter().filter(|e| e["kind"] == "task_exit").count();
    // One sched_process_exit per thread, short only by hits the kernel skipped (marked).
    assert!(exits <= threads.len() && exits + missed >= threads.len(), "{exits} exits for {} threads, {missed} hits skipped", threads.len());
    assert_eq!(imbalance(&all), None);
    let verdicts = String::from_utf8_lossy(&out.stdout);
    assert!(verdicts.trim().is_empty(), "no violations on a clean kernel, got:\n{verdicts}");

    // `check` replays it to the same verdicts (none), exit 0.
    let c = run(&["check", trace.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&c.stderr).contains(&format!("checked {} events", all.len())));
    assert_none_of_ours_loaded();
}

#[test]
fn check_reproduces_live_verdicts_and_catches_a_removed_release() {
    if !can_trace("check_reproduces_live_verdicts_and_catches_a_removed_release") {
        return;
    }
    let _g = serial();
    let (dir, trace) = tmp("live.jsonl");
    let cmd = format!("{} --threads 2 --iters 100", workload());
    // Every event: a default run folds a worker's balanced pairs in the kernel, so its stream
    // never holds the acquire-release-acquire a removed release must be proved by (this test
    // then skipped on every kernel, blaming skipped hook hits that were not there).
    let live = run(&["run", "--all-events", "-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(live.status.success());
    let replay = run(&["check", trace.to_str().unwrap()]);
    assert_eq!(live.stdout, replay.stdout, "check must print exactly the live verdicts");

    // Doctor a copy: drop one worker's write release. The model must then see that worker take
    // the lock for write again (or exit) while still holding it.
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    let tgid = header["filter"]["tgid"].as_u64().unwrap();
    let parsed: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect();
    let footer = parsed.last().unwrap();
    assert_eq!(footer["lost_events"], 0, "two threads must not overflow the default ring");
    let Some((victim, tid)) = provable_release(&parsed, tgid) else {
        skip(
            "check_reproduces_live_verdicts_and_catches_a_removed_release",
            "every worker write release lies in a stretch where the kernel skipped hook hits",
        );
        return;
    };
    let doctored: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, l)| *l).collect();
    let bad = dir.path().join("doctored.jsonl");
    std::fs::write(&bad, doctored.join("\n") + "\n").unwrap();
    let c = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(1), "violations make check exit 1");
    let stdout = String::from_utf8_lossy(&c.stdout);
    let first = stdout.lines().next().expect("a verdict");
    assert!(first.contains("mmap-lock-balance"), "{first}");
    assert!(first.contains(&format!("task {tid}/{tgid} ")), "verdict names the doctored task: {first}");
}

/// A worker's write release whose absence the stream itself proves: the same task's previous
/// and next successful acquires of that mm are both for write, so without the release the next
/// one re-takes a lock the task holds. A read acquire next would not prove it: with start_locking
/// filtered in the kernel (the default), it looks like mmap_write_downgrade. And none of the
/// three may lie in, or straddle, a stretch where the kernel skipped hook hits (7.x): the model
/// judges nothing there and forgets everything at both ends (`What::Missed`).
fn provable_release(parsed: &[Value], tgid: u64) -> Option<(usize, u64)> {
    // Index of the last event each line must not precede: a marker or a stretch's end.
    let mut last_reset = vec![0usize; parsed.len()];
    let mut blind = vec![false; parsed.len()];
    let (mut left, mut reset) = (0u64, 0usize);
    for (i, v) in parsed.iter().enumerate() {
        if v["kind"] == "missed" {
            left = v["span"].as_u64().unwrap_or(0);
            reset = i;
            blind[i] = true;
        } else if v["type"] == "event" && v["kind"] != "stack" && left > 0 {
            blind[i] = true;
            left -= 1;
            if left == 0 {
                reset = i;
            }
        }
        last_reset[i] = reset;
    }
    let acquire = |v: &Value, tid: u64, mm: &Value| {
        v["kind"] == "mmap_lock_acquired" && v["success"] == true && v["tid"].as_u64() == Some(tid) && &v["mm"] == mm
    };
    parsed.iter().enumerate().find_map(|(i, v)| {
        let tid = v["tid"].as_u64()?;
        if v["kind"] != "mmap_lock_released" || v["write"] != true || tid == tgid || blind[i] {
            return None;
        }
        let mm = &v["mm"];
        let before = (0..i).rev().find(|&j| acquire(&parsed[j], tid, mm))?;
        let after = (i + 1..parsed.len()).find(|&j| acquire(&parsed[j], tid, mm))?;
        let clear = parsed[before]["write"] == true
            && parsed[after]["write"] == true
            && !blind[before]
            && !blind[after]
            && last_reset[after] < before;
        clear.then_some((i, tid))
    })
}

#[test]
fn default_run_sends_only_what_the_rules_need() {
    if !can_trace("default_run_sends_only_what_the_rules_need") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("default.jsonl");
    let cmd = format!("{} --threads 1 --iters 50", workload());
    let out = run(&["-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let lines = lines(&trace);
    assert_eq!(lines[0]["all_events"], false);
    let evs = events(&lines);
    assert!(!evs.is_empty());
    // ...except an attempt made under a per-VMA read lock, which no-mmap-under-vma-read needs,
    // or under a rwsem lock-order watches (sent with its stack: the edge's mmap_lock side).
    assert!(
        evs.iter().all(|e| e["kind"] != "mmap_lock_start" || e["vma_read"].is_string() || e["stack"].is_number()),
        "start_locking is filtered in the kernel by default"
    );
    // ...and where nothing can need it (no per-VMA read-lock or rwsem hooks, as on this host)
    // it is not attached at all, and the summary says so; otherwise it is counted at the hook.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hits = stderr.lines().find(|l| l.contains("hook hits:")).unwrap();
    let skipped = stderr.lines().any(|l| l.contains("not attached: mmap_lock_start_locking"));
    assert!(skipped != hits.contains("mmap_lock_start_locking"), "{stderr}");
    // Balanced pairs stay in the kernel, and the summary counts what was folded. With only the
    // mmap_lock hooks (this host) nearly every pair folds; where VMA hooks fire inside holds
    // (vma_start_write under mmap_write_lock), those holds are sent with the events in them.
    let folded = summary_count(&stderr, "folded in the kernel");
    let acquires = evs.iter().filter(|e| e["kind"] == "mmap_lock_acquired").count() as u64;
    assert!(folded > 0, "nothing folded: {stderr}");
    if stderr.contains("function hooks: none") {
        assert!(folded > acquires, "folded {folded} pairs, sent {acquires} acquires");
    }
    // VMA events whose facts at the hook show them legal stay in the kernel too: on a clean
    // kernel the workload's mprotects (vma_prepare, vma_start_write, mprotect_fixup) send none
    // of the kinds only a violation needs. vma_start_write may still come, as the taken side of
    // a lock-order edge under a watched rwsem.
    let hooked = |f: &str| lines[0]["capabilities"]["functions"][f]["Attached"].is_string();
    if hooked("vma_prepare") || hooked("mprotect_fixup:return") {
        let kept = summary_count(&stderr, "kept in the kernel");
        assert!(kept > 0, "{stderr}");
        for kind in ["vma_prepare", "vma_new", "vma_modified"] {
            let n = evs.iter().filter(|e| e["kind"] == kind).count();
            assert_eq!(n, 0, "{n} legal {kind} events sent by a default run: {stderr}");
        }
    }
}

/// The bench loads (`vmalock-bench-load`), here or at `$VMALOCK_BENCH_LOAD` (the test guests).
fn bench_load() -> String {
    std::env::var("VMALOCK_BENCH_LOAD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vmalock-bench-load").into())
}

/// The lock-order graph file's edges, as "from -> to".
fn graph_edges(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("graph file")).expect("graph JSON");
    g["edges"].as_array().expect("edges").iter().map(|e| format!("{} -> {}", e["from"].as_str().unwrap(), e["to"].as_str().unwrap())).collect()
}

/// fork's dup_mmap takes each anon_vma and i_mmap_rwsem under the two mmap_locks, the same few
/// lock chains over and over. A default run sends one acquisition per chain a second and
/// drops the other acquire/release pairs in the kernel (locks.rs keep_acquire): it must learn
/// the same rwsem edges as a recording of the same loop, which sends every pair.
#[test]
fn default_run_drops_repeated_rwsem_pairs_and_learns_the_edges_a_recording_does() {
    let test = "default_run_drops_repeated_rwsem_pairs_and_learns_the_edges_a_recording_does";
    if !can_trace(test) {
        return;
    }
    let _g = serial();
    let cmd = format!("{} fork --seconds 1", bench_load());
    let (_d1, run_graph) = tmp("run-graph.json");
    let out = run(&["run", "--graph", run_graph.to_str().unwrap(), "-c", &cmd]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hooks = stderr.lines().find(|l| l.contains("function hooks:")).unwrap_or_else(|| panic!("no function hooks line: {stderr}"));
    if !hooks.contains("down_write") {
        skip(test, "down_write is not hooked on this kernel (fentry refused, no kprobes): lock-order sees mmap_lock only");
        return;
    }
    let dropped = summary_count(&stderr, "dropped in the kernel");
    assert!(dropped > 0, "{stderr}");
    let (_d2, trace) = tmp("fork.jsonl");
    assert!(run(&["record", "-o", trace.to_str().unwrap(), "-c", &cmd]).status.success());
    let (_d3, rec_graph) = tmp("record-graph.json");
    assert!(run(&["check", "--graph", rec_graph.to_str().unwrap(), trace.to_str().unwrap()]).status.success());
    // The edges of the rwsems lock-order watches. (A default run's graph has never had the
    // two kinds of edge only legal mmap_lock-side events show: mmap_lock -> vma_lock from the
    // VMA write locks it keeps, mmap_lock -> mmap_lock/1 from the start_locking it does not
    // send; README, "What a default run does not send".)
    let watched = |g: &std::path::Path| -> std::collections::BTreeSet<String> {
        graph_edges(g).into_iter().filter(|e| ["anon_vma", "i_mmap_rwsem", "i_rwsem"].iter().any(|c| e.contains(c))).collect()
    };
    let (by_run, by_record) = (watched(&run_graph), watched(&rec_graph));
    assert!(by_record.iter().any(|e| e.starts_with("mmap_lock") && e.contains("-> anon_vma")), "fork took no anon_vma under the mmap_lock: {by_record:?}");
    assert_eq!(by_run, by_record, "a default run ({dropped} pairs dropped) and a recording learned different rwsem edges");
    eprintln!("{dropped} pairs dropped; both learned {by_run:?}");
}

/// Every /proc/self/smaps read walks each VMA, under the reader's own mmap_read_lock
/// (PGWALK_RDLOCK) or, on 7.x, its per-VMA read lock (PGWALK_VMA_RDLOCK_VERIFY). A recording
/// sends each walk and step, but walks the kernel stack only of one a verdict could show
/// (vma.rs verdict_stack_id): under TCG the stacks were most of a recording's cost on this
/// load. The walks must still all be there.
#[test]
fn recording_sends_legal_page_walks_without_their_stacks() {
    let test = "recording_sends_legal_page_walks_without_their_stacks";
    if !can_trace(test) {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("smaps.jsonl");
    let cmd = format!("{} smaps --seconds 0.5", bench_load());
    let out = run(&["record", "-o", trace.to_str().unwrap(), "-c", &cmd]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hooks = stderr.lines().find(|l| l.contains("function hooks:")).unwrap_or_else(|| panic!("no function hooks line: {stderr}"));
    if !hooks.contains("walk_page_vma") || !hooks.contains("__walk_page_range") {
        skip(test, "walk_page_vma or __walk_page_range is not hooked on this kernel (fentry refused, no kprobes)");
        return;
    }
    let lines = lines(&trace);
    let evs = events(&lines);
    let of = |kind: &str| -> Vec<&Value> { evs.iter().copied().filter(|e| e["kind"] == kind).collect() };
    let (walks, steps) = (of("page_walk"), of("page_walk_vma"));
    let mut locks: std::collections::BTreeMap<String, usize> = Default::default();
    for w in &walks {
        *locks.entry(w["walk_lock"].to_string()).or_default() += 1;
    }
    assert!(walks.len() > 100 && steps.len() > 100, "smaps reads sent {} walks and {} steps", walks.len(), steps.len());
    let stacked = |v: &[&Value]| v.iter().filter(|e| !e["stack"].is_null()).count();
    assert_eq!(stacked(&walks), 0, "a legal walk walked its stack (walk_lock of the walks: {locks:?})");
    assert_eq!(stacked(&steps), 0, "a legal walk step walked its stack (walk_lock of the walks: {locks:?})");
    assert!(stderr.contains("violations: 0"), "{stderr}");
    eprintln!("{} walks ({locks:?}) and {} steps sent, none with a stack", walks.len(), steps.len());
}

/// A default run folds a pair whole or not at all, and a clean workload stays clean. (That a
/// leaked or unheld lock is still reported needs the test module: module_modes.rs,
/// balance_verdicts_survive_folding_in_a_default_run.)
#[test]
fn default_run_folds_pairs_whole() {
    if !can_trace("default_run_folds_pairs_whole") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("fold.jsonl");
    let cmd = format!("{} --threads 2 --iters 30", workload());
    let out = run(&["-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let lines = lines(&trace);
    assert_eq!(lines[0]["folded_pairs"], true);
    let evs = events(&lines);
    // Every acquire that was sent has its release sent too, or the task's exit: a pair is
    // folded whole or not at all.
    let mut open: std::collections::HashMap<(u64, String), i64> = Default::default();
    for e in &evs {
        let key = (e["tid"].as_u64().unwrap(), e["mm"].to_string());
        match e["kind"].as_str() {
            Some("mmap_lock_acquired") if e["success"] == true => *open.entry(key).or_default() += 1,
            Some("mmap_lock_released") => *open.entry(key).or_default() -= 1,
            _ => {}
        }
    }
    assert!(open.values().all(|n| *n >= 0), "a release was sent without its acquire: {open:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("violations: 0"), "{stderr}");
}

/// A default run stamps an acquire it kept and sent later (fork's nested mmap_lock sends the
/// parent's kept one) with a tick-old time, marked `ts_coarse`: never before anything the task
/// sent earlier, never after what made it be sent, and only on acquires.
#[test]
fn default_run_stamps_kept_acquires_in_task_order() {
    if !can_trace("default_run_stamps_kept_acquires_in_task_order") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("kept.jsonl");
    let cmd = format!("{} --threads 2 --iters 4", mix());
    let out = run(&["-c", &cmd, "-o", trace.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = lines(&trace);
    let evs = events(&lines);
    let coarse: Vec<&&Value> = evs.iter().filter(|e| e["ts_coarse"] == true).collect();
    assert!(!coarse.is_empty(), "no kept acquire was sent: the mix forks, and fork nests mmap_lock under a kept one");
    assert!(coarse.iter().all(|e| e["kind"] == "mmap_lock_acquired"), "{coarse:?}");
    // The task's own events, in the order it sent them (snapshots name a VMA's owner, not the
    // task that sent them, so they are left out).
    let mut last: HashMap<u64, (u64, &Value)> = HashMap::new();
    for e in evs.iter().filter(|e| e["kind"] != "vma_snapshot") {
        let (tid, ts) = (e["tid"].as_u64().unwrap(), e["ts_ns"].as_u64().unwrap());
        if let Some((prev, pe)) = last.get(&tid) {
            assert!(ts >= *prev, "task {tid} went back in time:\n{pe}\n{e}");
        }
        last.insert(tid, (ts, e));
    }
    eprintln!("{} kept acquires sent, each in its task's order", coarse.len());
}

#[test]
fn pid_filter_traces_only_that_process_and_stops_when_it_exits() {
    if !can_trace("pid_filter_traces_only_that_process_and_stops_when_it_exits") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("pid.jsonl");
    let go = trace.with_extension("go");
    let mut target = std::process::Command::new(workload())
        .args(["--threads", "2", "--iters", "100", "--wait-for", go.to_str().unwrap()])
        .spawn()
        .unwrap();
    let pid = target.id();
    let (vm, stderr) = spawn_tracing(&["record", "-p", &pid.to_string(), "-d", "300", "-o", trace.to_str().unwrap()]);
    std::fs::write(&go, b"").unwrap();
    let _ = target.wait();
    let out = vm.wait_with_output().unwrap();
    let stderr = stderr.join().unwrap();
    eprintln!("{stderr}");
    assert!(out.status.success());
    assert!(stderr.contains("traced process exited"), "{stderr}");
    let lines = lines(&trace);
    let evs = events(&lines);
    assert!(evs.len() > 100, "the workload ran after attach");
    assert!(evs.iter().all(|e| e["tgid"].as_u64() == Some(pid as u64)));
    // The process predates the trace; its worker threads were born after attach.
    assert!(evs.iter().any(|e| e["tid"].as_u64() == Some(pid as u64) && e["task_new"] != true));
    assert!(evs.iter().any(|e| e["tid"].as_u64() != Some(pid as u64) && e["task_new"] == true));
}

/// `--comm NAME` traces only tasks of that name, filtered in the kernel: a whole-system run
/// while the mix runs sees the mix's threads and nothing else (vmalock's own mmap_lock use
/// included), says so, and records the filter in the trace header.
#[test]
fn comm_filter_traces_only_tasks_of_that_name() {
    if !can_trace("comm_filter_traces_only_tasks_of_that_name") {
        return;
    }
    let _g = serial();
    // The kernel's comm: the executable's name, cut to 15 bytes.
    let file = std::path::Path::new(mix()).file_name().unwrap().to_string_lossy().into_owned();
    let name: String = file.chars().scan(0, |n, c| { *n += c.len_utf8(); (*n <= 15).then_some(c) }).collect();
    let mut busy = std::process::Command::new(mix())
        .args(["--threads", "2", "--iters", "100000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (_d, trace) = tmp("comm.jsonl");
    let out = run(&["--comm", &name, "-d", "1.5", "-o", trace.to_str().unwrap()]);
    let _ = busy.kill();
    let _ = busy.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("tracing all tasks named {name:?}")), "{stderr}");
    let lines = lines(&trace);
    assert_eq!(lines[0]["filter"]["comm"], name.as_str());
    let evs = events(&lines);
    assert!(!evs.is_empty(), "the mix ran under the filter, yet nothing was traced: {stderr}");
    let others: Vec<&&Value> = evs.iter().filter(|e| e["comm"] != name.as_str()).collect();
    assert!(others.is_empty(), "{} events from other tasks, first: {}", others.len(), others[0]);
    // A name no task can have is refused before anything is loaded, naming the one that fits.
    let long = run(&["--comm", "vmalock-workload", "-d", "1"]);
    assert_eq!(long.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&long.stderr).contains("use --comm vmalock-workloa"));
}

#[test]
fn sigterm_and_sigint_detach_cleanly_with_exit_0() {
    if !can_trace("sigterm_and_sigint_detach_cleanly_with_exit_0") {
        return;
    }
    let _g = serial();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // At once, as a script would on seeing the "tracing" line: the handlers must be in
        // place by then (they were not, and the signal's default action killed vmalock).
        let (child, stderr) = spawn_tracing(&["run", "-d", "300"]);
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let stderr = stderr.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{name} received")), "{stderr}");
        assert!(stderr.contains("lost events:"), "summary printed: {stderr}");
        assert_none_of_ours_loaded();
    }
}

#[test]
fn duration_stops_the_run_and_a_tiny_ring_reports_lost_events() {
    if !can_trace("duration_stops_the_run_and_a_tiny_ring_reports_lost_events") {
        return;
    }
    let _g = serial();
    // Four threads against a 4 KiB ring (56 records): the reader cannot keep up, and every
    // failed reserve must show up: in the summary, the footer, and in-band as lost_before.
    let (_d, trace) = tmp("lossy.jsonl");
    let cmd = format!("{} --threads 4 --iters 400", workload());
    let out = run(&["record", "--ring-kib", "4", "-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let lines = lines(&trace);
    let footer = lines.last().unwrap();
    let lost = footer["lost_events"].as_u64().unwrap();
    assert!(lost > 0, "a 4 KiB ring under 4 threads must overflow");
    let in_band: u64 = events(&lines).iter().map(|e| e["lost_before"].as_u64().unwrap_or(0)).sum();
    assert!(in_band > 0 && in_band <= lost, "in-band loss {in_band} vs footer {lost}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("lost events: {lost}")));
    // Losses reset the model's state instead of inventing violations.
    let c = run(&["check", trace.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(0), "lost events must not produce false verdicts");

    let d = run(&["run", "-d", "0.5"]);
    assert!(d.status.success());
    assert!(String::from_utf8_lossy(&d.stderr).contains("duration elapsed"));
}

#[test]
fn probe_reports_this_kernels_hook_families() {
    if !can_trace("probe_reports_this_kernels_hook_families") {
        return;
    }
    let _g = serial();
    let out = run(&["probe", "--json"]);
    assert!(out.status.success());
    let caps: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fam = |n: &str| caps["families"].as_array().unwrap().iter().find(|f| f["name"] == n).cloned().unwrap();
    // Whatever the kernel, the mmap_lock family must work for vmalock to be useful at all.
    assert_eq!(fam("tp_btf")["works"], true, "{caps}");
    assert_eq!(caps["rules"]["mmap-lock-balance"], "checked live");
    assert!(caps["layout"]["task_struct.start_time"].as_u64().is_some());
    // Refusals carry their errno. On this project's host kernel (no trampolines, no kprobes)
    // that is EPERM and the missing kprobe PMU; elsewhere fentry simply works.
    for f in ["fentry", "kprobe"] {
        let f = fam(f);
        if f["works"] == false {
            let d = f["detail"].as_str().unwrap();
            assert!(d.contains("refused: E"), "refusal without errno: {d}");
        }
    }
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(fam("kprobe")["works"], false);
        assert!(fam("kprobe")["detail"].as_str().unwrap().contains("CONFIG_KPROBES"));
    }
    assert_none_of_ours_loaded();
}

#[test]
fn not_root_gets_one_sentence_naming_the_fix() {
    // Needs root to drop privileges with util-linux's setpriv (busybox's applet in the test
    // guests has no --reuid); the vmalock binary must be reachable by nobody.
    let setpriv = ["/usr/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists());
    let (true, Some(setpriv)) = (unsafe { libc::geteuid() } == 0, setpriv) else {
        skip("not_root_gets_one_sentence_naming_the_fix", "needs root and setpriv to run vmalock as nobody");
        return;
    };
    for args in [&["run", "-d", "1"][..], &["probe"][..]] {
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", vmalock()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("not running as root") && e.contains("sudo"), "{e}");
        assert_eq!(e.lines().count(), 1, "one sentence: {e}");
    }
}

#[test]
fn bad_arguments_and_files_get_clear_errors() {
    let out = run(&["-c", "true", "-p", "1"]);
    assert_eq!(out.status.code(), Some(2), "-c and -p conflict");
    let out = run(&["run", "--ring-kib", "3", "-d", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = run(&["check", "/nonexistent/trace.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/trace.jsonl"));
    let (_d, bad) = tmp("bad.jsonl");
    std::fs::write(&bad, "{\"type\":\"header\",\"format\":\"vmalock-trace\"}\n").unwrap();
    let out = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"), "the error names the line");
}

#[test]
fn plain_tracepoint_fallback_records_the_same_kinds_of_events() {
    if !can_trace("plain_tracepoint_fallback_records_the_same_kinds_of_events") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("tp.jsonl");
    let cmd = format!("{} --threads 2 --iters 100", workload());
    let out = run(&["record", "--tracepoints", "-c", &cmd, "-o", trace.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("tracepoint failed") {
        skip("plain_tracepoint_fallback_records_the_same_kinds_of_events", "this kernel refuses plain tracepoints");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mmap_lock_acquire_returned (tracepoint)"), "{stderr}");
    let lines = lines(&trace);
    assert_eq!(lines[0]["capabilities"]["hooks"]["mmap_lock_released"], "tracepoint");
    let evs = events(&lines);
    // The record layout was decoded right: writes, successes and failures all present, and
    // every pointer is a kernel pointer (a wrong offset would read memcg ids or garbage).
    assert!(evs.iter().any(|e| e["kind"] == "mmap_lock_acquired" && e["write"] == true && e["success"] == true));
    assert!(evs.iter().any(|e| e["kind"] == "mmap_lock_released" && e["write"] == false));
    let mms: std::collections::HashSet<u64> = evs
        .iter()
        .filter_map(|e| e["mm"].as_str())
        .map(|m| u64::from_str_radix(m.trim_start_matches("0x"), 16).unwrap())
        .collect();
    // Kernel pointers (upper half, 4- or 5-level paging), and few of them: the child's mm
    // before and after exec. A wrong offset would read memcg ids or flags instead.
    assert!(mms.iter().all(|m| *m >= 0xff00_0000_0000_0000), "{mms:x?}");
    assert!(!mms.is_empty() && mms.len() <= 3, "{mms:x?}");
    assert_eq!(imbalance(&stream(&lines)), None);
    assert!(evs.iter().any(|e| e["kind"] == "task_exit"));
    assert_none_of_ours_loaded();
}

#[test]
fn sigkill_loses_at_most_the_last_line_and_leaves_nothing_loaded() {
    if !can_trace("sigkill_loses_at_most_the_last_line_and_leaves_nothing_loaded") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("killed.jsonl");
    let mut busy = std::process::Command::new(workload()).args(["--threads", "2", "--iters", "100000"]).spawn().unwrap();
    let (child, _stderr) = spawn_tracing(&["record", "-o", trace.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait_with_output();
    let _ = busy.kill();
    let _ = busy.wait();
    // Everything but possibly the last line parses; the replay warns and still checks it all.
    let text = std::fs::read_to_string(&trace).unwrap();
    let all: Vec<&str> = text.lines().collect();
    assert!(all.len() > 100, "events were flushed while running");
    for l in &all[..all.len() - 1] {
        serde_json::from_str::<Value>(l).expect("every line but the last is whole");
    }
    let c = run(&["check", trace.to_str().unwrap()]);
    assert!(c.status.code() == Some(0) || c.status.code() == Some(1));
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(stderr.contains("warning") && stderr.contains("no footer"), "{stderr}");
    // The kernel frees programs and links with the last fd: SIGKILL leaves nothing behind.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_none_of_ours_loaded();
}

#[test]
fn only_attached_programs_stay_loaded() {
    if !can_trace("only_attached_programs_stay_loaded") {
        return;
    }
    let _g = serial();
    // The daemon reads every loaded program's skipped-hit count at each drain: a program whose
    // attach was refused (a kprobe where kprobes are not built in) must not stay loaded.
    let (_d, trace) = tmp("held.jsonl");
    let (child, stderr) = spawn_tracing(&["record", "-d", "300", "-o", trace.to_str().unwrap()]);
    let held = prog_ids_held_by(&child.id().to_string()).unwrap_or_else(|e| panic!("/proc/{}/fdinfo: {e}", child.id()));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let header = lines(&trace).into_iter().next().expect("a header line");
    let caps = &header["capabilities"];
    let hooks = caps["hooks"].as_object().expect("hooks in the header").len();
    // A function hook is one program of its own unless it is seen through another hook's
    // ("inline on this kernel: ... via the down_write hook").
    let functions = caps["functions"]
        .as_object()
        .expect("functions in the header")
        .values()
        .filter(|s| s["Attached"].as_str().is_some_and(|f| ["fentry", "fexit", "kprobe", "kretprobe"].contains(&f)))
        .count();
    let iter = usize::from(caps["snapshot"].as_str().is_some_and(|s| s.starts_with("iter/")));
    assert_eq!(
        held.len(),
        hooks + functions + iter,
        "programs held by the daemon {held:?}: {hooks} hooks, {functions} function hooks, {iter} iterator attached ({})",
        caps
    );
}

/// The event count `vmalock check` printed ("checked N events from ...").
/// The number ending the summary line that contains `marker` ("...: N").
fn summary_count(stderr: &str, marker: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.split(marker).nth(1))
        .and_then(|rest| rest.rsplit(": ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no summary line with '{marker}': {stderr}"))
}

fn checked_events(o: &std::process::Output) -> u64 {
    let e = String::from_utf8_lossy(&o.stderr);
    e.split("checked ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no event count from check: {e}"))
}

/// A binary recording holds the same events as JSON Lines: `check` of it and of its JSON Lines
/// export print the same verdicts from the same event count, and it is the smaller file.
#[test]
fn binary_trace_checks_like_its_json_lines_export() {
    if !can_trace("binary_trace_checks_like_its_json_lines_export") {
        return;
    }
    let _g = serial();
    let (dir, trace) = tmp("live.bin");
    let cmd = format!("{} --threads 2 --iters 200", workload());
    let rec = run(&["record", "--trace-format", "binary", "-c", &cmd, "-o", trace.to_str().unwrap()]);
    assert!(rec.status.success(), "{}", String::from_utf8_lossy(&rec.stderr));
    let jsonl = dir.path().join("export.jsonl");
    let ex = run(&["export", "-f", "jsonl", "--raw-pointers", "-o", jsonl.to_str().unwrap(), trace.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    let (b, j) = (run(&["check", trace.to_str().unwrap()]), run(&["check", jsonl.to_str().unwrap()]));
    assert_eq!(b.status.code(), j.status.code());
    assert_eq!(b.stdout, j.stdout, "same verdicts from both forms");
    let (nb, nj) = (checked_events(&b), checked_events(&j));
    assert!(nb > 100 && nb == nj, "{nb} vs {nj} events");
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&trace) < size(&jsonl), "binary {} bytes, JSON Lines {}", size(&trace), size(&jsonl));
    // The export's footer is the recording's: it finished cleanly.
    let last = std::fs::read_to_string(&jsonl).unwrap().lines().last().unwrap().to_string();
    assert!(last.contains("\"type\":\"footer\"") && !last.contains("did not finish"), "{last}");
}

/// A binary recorder killed mid-write leaves a file `check` reads to its last whole record.
#[test]
fn sigkill_of_a_binary_recording_keeps_every_whole_record() {
    if !can_trace("sigkill_of_a_binary_recording_keeps_every_whole_record") {
        return;
    }
    let _g = serial();
    let (_d, trace) = tmp("killed.bin");
    let mut busy = std::process::Command::new(workload()).args(["--threads", "2", "--iters", "100000"]).spawn().unwrap();
    let (child, _stderr) = spawn_tracing(&["record", "--trace-format", "binary", "-o", trace.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait_with_output();
    let _ = busy.kill();
    let _ = busy.wait();
    let c = run(&["check", trace.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.code() == Some(0) || c.status.code() == Some(1), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("no footer"), "{stderr}");
    assert!(checked_events(&c) > 100, "events were flushed while running: {stderr}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_none_of_ours_loaded();
}
