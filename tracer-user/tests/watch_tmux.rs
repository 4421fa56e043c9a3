//! `vmalock watch` end to end, in a real terminal: tmux runs the dashboard over a live workload,
//! the test types keys, reads the screen, quits, and checks that nothing of ours stays loaded.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("running tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane's text, once `pred` holds for it (or panics after `secs` with the last screen).
fn wait_for(session: &str, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&screen) {
            return screen;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}; the screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn keys(session: &str, k: &str) {
    tmux(&["send-keys", "-t", session, k]);
}

/// One traced dashboard at a time: each test checks that no program of ours is left loaded.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends the session even when an assertion fails half-way.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

#[test]
fn watch_shows_panes_takes_keys_and_detaches_on_q() {
    if !can_run("watch_shows_panes_takes_keys_and_detaches_on_q") {
        return;
    }
    let _g = serial();
    let session = format!("vmalock-watch-{}", std::process::id());
    let _guard = Session(session.clone());
    let cmd = format!(
        "{} watch -c '{} --threads 2 --iters 100000000'; echo VMALOCK-EXIT=$?; sleep 600",
        common::vmalock(),
        common::workload()
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "32", &cmd]);

    let screen = wait_for(&session, "the dashboard to start tracing", 120, |s| s.contains("command (pid"));
    assert!(screen.contains("1 Violations") && screen.contains("q  quit"), "{screen}");

    keys(&session, "3");
    let rates = wait_for(&session, "events in the rates pane", 60, |s| {
        s.contains("mmap_lock_acquire_returned") && !s.contains("received 0 events")
    });
    assert!(rates.contains("ring buffer 4096 KiB"), "{rates}");

    keys(&session, "4");
    let rules = wait_for(&session, "the rules pane", 10, |s| s.contains("on this kernel"));
    assert!(rules.contains("mmap-lock-balance") && rules.contains("checked live"), "{rules}");

    keys(&session, "?");
    wait_for(&session, "the help", 10, |s| s.contains("Keys (Esc or ? to close)") && s.contains("filter by pid or tid"));
    keys(&session, "Escape");
    wait_for(&session, "the help to close", 10, |s| !s.contains("Keys (Esc"));

    keys(&session, "2");
    wait_for(&session, "the tasks pane", 10, |s| s.contains("Tasks holding locks now"));
    keys(&session, "f");
    wait_for(&session, "the freeze marker", 10, |s| s.contains("FROZEN"));

    keys(&session, "q");
    let end = wait_for(&session, "vmalock to detach and exit", 120, |s| s.contains("VMALOCK-EXIT="));
    assert!(end.contains("vmalock: stopped: quit from the dashboard"), "{end}");
    assert!(end.contains("VMALOCK-EXIT=0"), "{end}");
    assert_eq!(tmux(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(), "0", "left the alternate screen");
    common::assert_none_of_ours_loaded();
}

/// Skips (loudly) unless this test can trace and tmux is here.
fn can_run(test: &str) -> bool {
    if !common::can_trace(test) {
        return false;
    }
    if Command::new("tmux").arg("-V").output().map_or(true, |o| !o.status.success()) {
        common::skip(test, "tmux is not installed (cargo xtask setup installs it as root)");
        return false;
    }
    true
}

#[test]
fn sigterm_restores_the_terminal_and_detaches() {
    if !can_run("sigterm_restores_the_terminal_and_detaches") {
        return;
    }
    let _g = serial();
    let session = format!("vmalock-term-{}", std::process::id());
    let _guard = Session(session.clone());
    let cmd = format!(
        "{} watch -c '{} --threads 1 --iters 100000000'; echo VMALOCK-EXIT=$?; sleep 600",
        common::vmalock(),
        common::workload()
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "32", &cmd]);
    wait_for(&session, "the dashboard to start tracing", 120, |s| s.contains("command (pid"));
    assert_eq!(tmux(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(), "1", "the dashboard uses the alternate screen");
    // The pane runs a shell whose child is vmalock.
    let shell = tmux(&["display", "-p", "-t", &session, "#{pane_pid}"]);
    let out = Command::new("pgrep").args(["-P", shell.trim(), "-x", "vmalock"]).output().expect("pgrep");
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("vmalock's pid");
    // SAFETY: kill(2) on a pid we just looked up; SIGTERM only asks it to stop.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let end = wait_for(&session, "vmalock to exit after SIGTERM", 120, |s| s.contains("VMALOCK-EXIT="));
    assert!(end.contains("vmalock: stopped: SIGTERM received"), "{end}");
    assert!(end.contains("VMALOCK-EXIT=0"), "{end}");
    assert_eq!(tmux(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(), "0", "terminal restored");
    common::assert_none_of_ours_loaded();
}

/// Without a terminal (piped, CI) plain `vmalock` is the text report; `watch` refuses clearly.
#[test]
fn without_a_terminal_the_default_is_the_text_report() {
    let test = "without_a_terminal_the_default_is_the_text_report";
    if !common::can_trace(test) {
        return;
    }
    let _g = serial();
    let out = Command::new(common::vmalock())
        .args(["-c", &format!("{} --threads 1 --iters 2000", common::workload())])
        .output()
        .expect("running vmalock");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("vmalock: stopped: command exited"), "{err}");
    assert!(err.contains("rules checked live: mmap-lock-balance"), "{err}");
    // Violations, if any, are whole VIOLATION lines on stdout; nothing else goes there.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().all(|l| l.starts_with("VIOLATION ")), "{stdout}");
    common::assert_none_of_ours_loaded();

    let out = Command::new(common::vmalock()).args(["watch", "-d", "1"]).output().expect("running vmalock watch");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("watch needs a terminal") && err.contains("vmalock run"), "{err}");
}
