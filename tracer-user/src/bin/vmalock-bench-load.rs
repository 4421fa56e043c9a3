//! mm-heavy microbenchmarks for `cargo xtask bench`: each runs one kind of mm operation in a
//! loop for a fixed time and prints its rate, so the same binary measured with and without a
//! tracer gives the tracer's cost as a throughput ratio.
//!
//! usage: vmalock-bench-load BENCH [--seconds S] [--threads T]
//!
//! BENCH (what one op is):
//!   fault     one page fault: T threads each map 4 MiB, write one byte per page, unmap
//!   mmap      one mmap + munmap of a 4 KiB anonymous page
//!   mprotect  one mprotect of the middle page of a 3-page mapping, RW <-> R (split and merge)
//!   madvise   one madvise(MADV_DONTNEED) of 64 pages just written (so each call has work)
//!   smaps     one full read of /proc/self/smaps (a page walk of every VMA)
//!   fork      one fork + child _exit + waitpid
//!
//! It prints one line, the bench's only stdout, for the harness to parse:
//!   vmalock-bench-load: bench=fault threads=2 ops=N secs=S ops_per_s=R
//! Any failing syscall panics (non-zero exit): a bench never reports a rate for work it did not do.

use std::{
    io::Read as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use libc::{c_void, MADV_DONTNEED, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE};

const PAGE: usize = 4096;

fn check(ok: bool, what: &str) {
    if !ok {
        panic!("{what} failed: {}", std::io::Error::last_os_error());
    }
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) };
    check(p != MAP_FAILED, "mmap");
    p.cast()
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: `p..p+len` is a mapping this bench made and no reference into it outlives this call.
    check(unsafe { libc::munmap(p.cast::<c_void>(), len) } == 0, "munmap");
}

/// Writes one byte per page (each write faults a fresh anonymous page in).
fn touch(p: *mut u8, pages: usize) {
    for i in 0..pages {
        // SAFETY: `p` maps at least `pages` writable pages.
        unsafe { p.add(i * PAGE).write_volatile(1) };
    }
}

/// One round of `bench`; returns the ops it did. Rounds are short (well under a millisecond
/// to a few ms) so the stop flag is seen promptly.
fn round(bench: &str, state: &mut State) -> u64 {
    match bench {
        "fault" => {
            const PAGES: usize = 1024;
            let p = map(PAGES * PAGE);
            touch(p, PAGES);
            unmap(p, PAGES * PAGE);
            PAGES as u64
        }
        "mmap" => {
            unmap(map(PAGE), PAGE);
            1
        }
        "mprotect" => {
            let p = state.mapping(3);
            state.flip = !state.flip;
            let prot = if state.flip { PROT_READ } else { PROT_READ | PROT_WRITE };
            // SAFETY: the middle page of this thread's own 3-page mapping; nothing reads it.
            check(unsafe { libc::mprotect(p.add(PAGE).cast(), PAGE, prot) } == 0, "mprotect");
            1
        }
        "madvise" => {
            const PAGES: usize = 64;
            let p = state.mapping(PAGES);
            touch(p, PAGES);
            // SAFETY: this thread's own mapping; DONTNEED only drops its pages.
            check(unsafe { libc::madvise(p.cast(), PAGES * PAGE, MADV_DONTNEED) } == 0, "madvise");
            1
        }
        "smaps" => {
            state.buf.clear();
            std::fs::File::open("/proc/self/smaps")
                .and_then(|mut f| f.read_to_end(&mut state.buf))
                .unwrap_or_else(|e| panic!("reading /proc/self/smaps failed: {e}"));
            1
        }
        "fork" => {
            // SAFETY: the child only calls _exit (async-signal-safe) before it ends.
            let pid = unsafe { libc::fork() };
            check(pid >= 0, "fork");
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            check(unsafe { libc::waitpid(pid, &mut status, 0) } == pid, "waitpid");
            1
        }
        other => panic!("unknown bench {other:?}; one of: {}", BENCHES.join(", ")),
    }
}

const BENCHES: &[&str] = &["fault", "mmap", "mprotect", "madvise", "smaps", "fork"];

/// Per-thread state that lives across rounds: a mapping reused by mprotect and madvise, the
/// smaps read buffer.
#[derive(Default)]
struct State {
    map: Option<(usize, usize)>,
    flip: bool,
    buf: Vec<u8>,
}

impl State {
    fn mapping(&mut self, pages: usize) -> *mut u8 {
        let (p, _) = *self.map.get_or_insert_with(|| (map(pages * PAGE) as usize, pages));
        p as *mut u8
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some((p, pages)) = self.map.take() {
            unmap(p as *mut u8, pages * PAGE);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.first().cloned().unwrap_or_else(|| {
        eprintln!("usage: vmalock-bench-load BENCH [--seconds S] [--threads T]; BENCH: {}", BENCHES.join(", "));
        std::process::exit(2)
    });
    if !BENCHES.contains(&bench.as_str()) {
        eprintln!("vmalock-bench-load: unknown bench {bench:?}; one of: {}", BENCHES.join(", "));
        std::process::exit(2);
    }
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let seconds: f64 = opt("--seconds").map_or(2.0, |v| v.parse().expect("--seconds takes a number"));
    // The fault loop is the multi-threaded one (faults of one mm on several CPUs contend on its
    // locks); the others measure one thread's syscall path.
    let threads: usize = opt("--threads").map_or(if bench == "fault" { 2 } else { 1 }, |v| v.parse().expect("--threads takes a number"));

    // Every op is on 4 KiB pages whatever the kernel's THP setting: Debian's kernels default to
    // THP "always", under which the fault loop's 4 MiB mapping took two huge-page faults per
    // 1024 writes and measured huge-page zeroing, not page faults.
    // SAFETY: prctl with integer arguments only; it sets a flag on this process's mm.
    check(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0, "prctl(PR_SET_THP_DISABLE)");
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, ops, bench) = (stop.clone(), ops.clone(), bench.clone());
            thread::spawn(move || {
                let mut state = State::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += round(&bench, &mut state);
                }
                ops.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a bench thread panicked");
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = ops.load(Ordering::Relaxed);
    println!("vmalock-bench-load: bench={bench} threads={threads} ops={ops} secs={secs:.3} ops_per_s={:.1}", ops as f64 / secs);
}
