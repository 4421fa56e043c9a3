//! Userspace throughput: how fast `vmalock check` replays a recorded trace through the model on
//! one core, and whether the live daemon's memory stays flat over a long run.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use super::Bins;

#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    /// The trace file's form: "binary" or "jsonl".
    pub format: String,
    /// How the trace was made (the exact vmalock commands).
    pub recorded_with: String,
    pub trace_bytes: u64,
    pub events: u64,
    pub wall_secs: f64,
    /// user + system CPU of `vmalock check` (pinned to one CPU).
    pub cpu_secs: f64,
    pub events_per_wall_s: f64,
    pub events_per_cpu_s: f64,
}

/// Records `seconds` of the mmap/munmap bench with every event (the densest stream the benches
/// make) as a binary trace, exports the same events as JSON Lines, then replays each with
/// `vmalock check` pinned to CPU 0, `repeats` times; keeps each form's fastest replay (the one
/// least disturbed by other load).
pub fn replay(bins: &Bins, seconds: f64, repeats: usize) -> Result<Vec<Replay>> {
    let binary = super::out_dir().join("replay.trace");
    let jsonl = super::out_dir().join("replay.jsonl");
    let load = format!("{} mmap --seconds {seconds}", bins.load.display());
    let mut rec = Command::new(&bins.vmalock);
    rec.args(["record", "--trace-format", "binary", "-o"]).arg(&binary).args(["-c", &load]);
    let out = rec.output().context("recording the replay trace")?;
    if !out.status.success() {
        bail!("recording the replay trace failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut export = Command::new(&bins.vmalock);
    export.args(["export", "-f", "jsonl", "--raw-pointers", "-o"]).arg(&jsonl).arg(&binary);
    let out = export.output().context("exporting the replay trace as JSON Lines")?;
    if !out.status.success() {
        bail!("exporting the replay trace failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let recorded = format!("vmalock record --trace-format binary -o {} -c '{load}'", binary.display());
    let forms = [
        ("binary", &binary, recorded.clone()),
        ("jsonl", &jsonl, format!("{recorded}; vmalock export -f jsonl --raw-pointers -o {} {}", jsonl.display(), binary.display())),
    ];
    let mut results = Vec::new();
    for (format, trace, recorded_with) in forms {
        results.push(best_replay(bins, format, trace, recorded_with, repeats)?);
    }
    let _ = std::fs::remove_file(&binary);
    let _ = std::fs::remove_file(&jsonl);
    Ok(results)
}

fn best_replay(bins: &Bins, format: &str, trace: &Path, recorded_with: String, repeats: usize) -> Result<Replay> {
    let trace_bytes = std::fs::metadata(trace)?.len();
    let mut best: Option<Replay> = None;
    for _ in 0..repeats.max(1) {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&bins.vmalock).arg("check").arg(trace).stdout(Stdio::null()).stderr(Stdio::piped());
        let (wall, cpu, status, stderr) = timed(c)?;
        // check exits 1 when the trace has violations; that is still a full replay.
        if !matches!(status, 0 | 1) {
            bail!("vmalock check of {} exited {status}: {stderr}", trace.display());
        }
        let events: u64 = stderr
            .split("checked ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("vmalock check printed no event count: {stderr}"))?;
        let r = Replay {
            format: format.into(),
            recorded_with: recorded_with.clone(),
            trace_bytes,
            events,
            wall_secs: wall,
            cpu_secs: cpu,
            events_per_wall_s: events as f64 / wall,
            events_per_cpu_s: events as f64 / cpu,
        };
        println!(
            "bench: replay of {events} events ({format}): {:.0} events/s wall, {:.0} events/s of CPU",
            r.events_per_wall_s, r.events_per_cpu_s
        );
        if best.as_ref().is_none_or(|b| r.events_per_cpu_s > b.events_per_cpu_s) {
            best = Some(r);
        }
    }
    best.ok_or_else(|| anyhow!("no replay ran"))
}

/// Runs `c` to the end; (wall seconds, user+system CPU seconds, exit code, stderr).
fn timed(mut c: Command) -> Result<(f64, f64, i32, String)> {
    let start = Instant::now();
    let child = c.spawn().context("starting vmalock check")?;
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.map(|mut s| {
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut buf);
            buf
        })
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned (std's Child never reaped it).
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let wall = start.elapsed().as_secs_f64();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = secs(ru.ru_utime) + secs(ru.ru_stime);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Ok((wall, cpu, code, stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()))
}

#[derive(Clone, Debug, Serialize)]
pub struct Rss {
    pub seconds: u64,
    pub command: String,
    /// (seconds since start, VmRSS KiB) once a second.
    pub samples: Vec<(u64, u64)>,
    pub peak_kib: u64,
    /// Highest RSS over the second quarter of the run and over the last quarter (the first
    /// quarter is warm-up: maps, symbol tables, buffers reach their working size).
    pub second_quarter_max_kib: u64,
    pub last_quarter_max_kib: u64,
    pub flat: bool,
    pub mix_rounds: u64,
    pub summary: String,
}

/// `vmalock run -d seconds` on the whole system while vmalock-mix runs again and again; samples
/// the daemon's RSS once a second.
pub fn rss(bins: &Bins, seconds: u64) -> Result<Rss> {
    let mut daemon = Command::new(&bins.vmalock);
    daemon.args(["run", "-d", &seconds.to_string()]).stdout(Stdio::null()).stderr(Stdio::piped());
    let command = format!("vmalock run -d {seconds} (whole system) + vmalock-mix --threads 2 --iters 20 in a loop");
    let mut child = daemon.spawn().context("starting the vmalock daemon")?;
    let pid = child.id();
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut peak = 0;
    let mut mix_rounds = 0;
    let mut next_sample = 0;
    std::thread::sleep(Duration::from_secs(1));
    while child.try_wait()?.is_none() {
        let status = Command::new(&bins.mix).args(["--threads", "2", "--iters", "20"]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("vmalock-mix failed: {status}");
        }
        mix_rounds += 1;
        let t = start.elapsed().as_secs();
        if t >= next_sample {
            if let Some((rss, hwm)) = status_kib(pid) {
                samples.push((t, rss));
                peak = peak.max(hwm);
            }
            next_sample = t + 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let quarter_max = |lo: f64, hi: f64| {
        samples
            .iter()
            .filter(|(t, _)| (*t as f64) >= lo * seconds as f64 && (*t as f64) < hi * seconds as f64)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    };
    let (q2, q4) = (quarter_max(0.25, 0.5), quarter_max(0.75, 1.01));
    // Flat: the last quarter's peak within 2% (or 1 MiB) of the second quarter's.
    let flat = q4 <= q2 + (q2 / 50).max(1024);
    Ok(Rss { seconds, command, samples, peak_kib: peak, second_quarter_max_kib: q2, last_quarter_max_kib: q4, flat, mix_rounds, summary })
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn status_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let get = |key: &str| {
        s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}
