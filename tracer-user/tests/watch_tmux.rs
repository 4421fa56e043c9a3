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

/// Ends the session even when an assertion fails half-way.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

#[test]
fn watch_shows_panes_takes_keys_and_detaches_on_q() {
    let test = "watch_tmux::watch_shows_panes_takes_keys_and_detaches_on_q";
    if !common::can_trace(test) {
        return;
    }
    if Command::new("tmux").arg("-V").output().map_or(true, |o| !o.status.success()) {
        common::skip(test, "tmux is not installed (cargo xtask setup installs it as root)");
        return;
    }
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
    common::assert_none_of_ours_loaded();
}
