//! The dashboard under load: `vmalock watch --all-events` in a tmux pane over a microbenchmark
//! (every event to userspace: the highest rate the dashboard can be fed), while a key that
//! visibly changes the screen (`?` opens the help, Esc closes it) is sent every half second.
//! Reports the key-to-screen latency and the events received and lost, read from the
//! dashboard's own rates pane once the workload is done. Nothing here asserts: it measures.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{Bins, stats::{Spread, spread}};

#[derive(Clone, Debug, Serialize)]
pub struct DashRun {
    pub bench: String,
    pub seconds: f64,
    /// Key sent → the screen shows its effect, per key, in ms (capture polled every 10 ms).
    pub key_ms: Option<Spread>,
    pub keys: usize,
    /// Keys whose effect never showed within 5 s.
    pub keys_unanswered: usize,
    pub events_received: Option<u64>,
    pub lost: Option<u64>,
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(args).output().context("running tmux")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn screen(session: &str) -> Result<String> {
    tmux(&["capture-pane", "-p", "-t", session])
}

/// Polls the pane until `pred` holds; the time it took, or None after `limit`.
fn until(session: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if pred(&screen(session)?) {
            return Ok(Some(t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(None)
}

const HELP: &str = "Keys (Esc or ? to close)";

/// One dashboard run over `bench` for `seconds`.
pub fn run(bins: &Bins, bench: &str, seconds: f64) -> Result<DashRun> {
    let session = format!("vmalock-bench-dash-{}", std::process::id());
    let _ = tmux(&["kill-session", "-t", &session]);
    let cmd = format!(
        "{} watch --all-events -c '{} {bench} --seconds {seconds}'; sleep 600",
        bins.vmalock.display(),
        bins.load.display()
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "140", "-y", "40", &cmd])?;
    let result = measure(&session, seconds);
    let _ = tmux(&["send-keys", "-t", &session, "q"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = tmux(&["kill-session", "-t", &session]);
    let (lat, unanswered, received, lost) = result?;
    Ok(DashRun {
        bench: bench.into(),
        seconds,
        key_ms: spread(&lat),
        keys: lat.len() + unanswered,
        keys_unanswered: unanswered,
        events_received: received,
        lost,
    })
}

type Measured = (Vec<f64>, usize, Option<u64>, Option<u64>);

fn measure(session: &str, seconds: f64) -> Result<Measured> {
    if until(session, Duration::from_secs(60), |s| s.contains("command (pid"))?.is_none() {
        bail!("the dashboard did not start tracing within 60 s:\n{}", screen(session)?);
    }
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut lat, mut unanswered) = (Vec::new(), 0);
    while Instant::now() < end {
        let t0 = Instant::now();
        tmux(&["send-keys", "-t", session, "?"])?;
        match until(session, Duration::from_secs(5), |s| s.contains(HELP))? {
            Some(_) => lat.push(t0.elapsed().as_secs_f64() * 1e3),
            None => unanswered += 1,
        }
        tmux(&["send-keys", "-t", session, "Escape"])?;
        until(session, Duration::from_secs(5), |s| !s.contains(HELP))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    // The workload is done: the rates pane has the run's totals.
    until(session, Duration::from_secs(30), |s| s.contains("command exited"))?;
    tmux(&["send-keys", "-t", session, "3"])?;
    std::thread::sleep(Duration::from_millis(500));
    let s = screen(session)?;
    let num_after = |label: &str| -> Option<u64> {
        let rest = s.split(label).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    Ok((lat, unanswered, num_after("received "), num_after("lost ")))
}

pub fn markdown(runs: &[DashRun], out: &mut String) {
    use std::fmt::Write as _;
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nThe dashboard under load (`vmalock watch --all-events -c BENCH` in a 140×40 tmux pane; `?` sent every 0.5 s, time until the help shows, then Esc; totals read from the dashboard's rates pane at the end):\n"
    );
    let _ = writeln!(out, "| bench | seconds | events received | events/s | lost | key → screen ms (min / median / max) | keys unanswered in 5 s |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- | ---: |");
    for r in runs {
        let fmt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        let rate = r.events_received.map(|n| format!("{:.0}", n as f64 / r.seconds)).unwrap_or_else(|| "?".into());
        let key = r.key_ms.as_ref().map(|k| format!("{:.0} / {:.0} / {:.0}", k.min, k.median, k.max)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} of {} |",
            r.bench,
            r.seconds,
            fmt(r.events_received),
            rate,
            fmt(r.lost),
            key,
            r.keys_unanswered,
            r.keys
        );
    }
}
