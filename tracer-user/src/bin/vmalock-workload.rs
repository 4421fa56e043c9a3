//! A small mm workload for vmalock's tests: threads that map, touch, protect and unmap memory,
//! so every mmap_lock path (read for faults, write for mmap/mprotect, write→downgrade for munmap)
//! runs many times. `--sleep-first MS` gives a tracer time to attach by PID.
//!
//! `--wait-for PATH` waits until PATH exists before working (a test creates it once the tracer
//! is live).
//!
//! usage: vmalock-workload [--threads N] [--iters N] [--sleep-first MS] [--wait-for PATH]

#[path = "workload_args/mod.rs"]
mod workload_args;

use workload_args::{arg, wait_to_start};

use std::thread;


fn churn(iters: u64) {
    const LEN: usize = 64 << 10;
    for i in 0..iters {
        // SAFETY: anonymous private mappings we own for the duration of the loop body.
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(p, libc::MAP_FAILED, "mmap failed");
            let bytes = p.cast::<u8>();
            // Touch a few pages: page faults take the per-VMA lock or mmap_lock for read.
            for page in 0..4 {
                bytes.add(page * 4096).write_volatile(i as u8);
            }
            assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ), 0, "mprotect failed");
            libc::madvise(p.cast::<u8>().add(8192).cast(), 8192, libc::MADV_DONTNEED);
            assert_eq!(libc::munmap(p, LEN), 0, "munmap failed");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 4);
    let iters = arg(&args, "--iters", 200);
    wait_to_start(&args);
    let handles: Vec<_> = (0..threads).map(|_| thread::spawn(move || churn(iters))).collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
}
