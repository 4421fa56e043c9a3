//! A small mm workload for vmalock's tests: threads that map, touch, protect and unmap memory,
//! so every mmap_lock path (read for faults, write for mmap/mprotect, write→downgrade for munmap)
//! runs many times. `--sleep-first MS` gives a tracer time to attach by PID.
//!
//! `--wait-for PATH` waits until PATH exists before working (a test creates it once the tracer
//! is live).
//!
//! `--seed MODE` instead runs one single-threaded syscall sequence that takes one of the code
//! paths the seed-regressions kernel breaks (vm-images/recipes/seed-regressions, driven by
//! tests/regressions.rs), lingering `--linger MS` before and after so VMA snapshots see both
//! sides: mbind, mlock, merge-right, mremap, brk.
//!
//! usage: vmalock-workload [--threads N] [--iters N] [--sleep-first MS] [--wait-for PATH]
//!        vmalock-workload --seed MODE [--linger MS]

#[path = "workload_args/mod.rs"]
mod workload_args;

use workload_args::{arg, wait_to_start};

use std::{thread, time::Duration};


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

const PAGE: usize = 4096;

/// `len` bytes at `addr` (0: anywhere), anonymous and private; panics on failure.
fn map(addr: usize, len: usize, prot: i32) -> usize {
    let fixed = if addr != 0 { libc::MAP_FIXED } else { 0 };
    // SAFETY: an anonymous mapping; MAP_FIXED only over a reservation this process made.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed, -1, 0) };
    assert_ne!(p, libc::MAP_FAILED, "mmap({addr:#x}, {len:#x}) failed: {}", std::io::Error::last_os_error());
    p as usize
}

/// A VMA of `pages` read-write pages with an inaccessible page on each side, so that no change
/// to it can merge with a neighbour (a merge or a split would write-lock it on its own).
fn guarded(pages: usize) -> usize {
    let r = map(0, (pages + 2) * PAGE, libc::PROT_NONE);
    map(r + PAGE, pages * PAGE, libc::PROT_READ | libc::PROT_WRITE)
}

fn touch(addr: usize, pages: usize) {
    for i in 0..pages {
        // SAFETY: the pages were mapped read-write by this process.
        unsafe { ((addr + i * PAGE) as *mut u8).write_volatile(1) };
    }
}

fn check(what: &str, rc: libc::c_long) {
    assert_eq!(rc, 0, "{what} failed: {}", std::io::Error::last_os_error());
    eprintln!("vmalock-workload: {what} done");
}

/// mbind(MPOL_BIND, node 0) over `len` bytes at `addr`, with `flags` (MPOL_MF_*).
fn mbind(addr: usize, len: usize, flags: u32) -> libc::c_long {
    const MPOL_BIND: libc::c_long = 2;
    let nodes: libc::c_ulong = 1;
    // SAFETY: plain syscall; the node mask outlives it.
    unsafe { libc::syscall(libc::SYS_mbind, addr, len, MPOL_BIND, &nodes as *const libc::c_ulong, 64 as libc::c_ulong, flags as libc::c_ulong) }
}

/// The start of the VMA in /proc/self/maps that contains `addr`, if any.
fn vma_start(addr: usize) -> Option<usize> {
    std::fs::read_to_string("/proc/self/maps").ok()?.lines().find_map(|l| {
        let (a, b) = l.split_whitespace().next()?.split_once('-')?;
        let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
        (a <= addr && addr < b).then_some(a)
    })
}

fn seed(mode: &str, linger: Duration) {
    const MPOL_MF_MOVE: u32 = 1 << 1;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    match mode {
        // Item 1: do_mbind -> queue_pages_range (walks with MPOL_MF_MOVE) -> mbind_range on one
        // whole VMA, neither split nor merged.
        "mbind" => {
            let p = guarded(4);
            touch(p, 4);
            thread::sleep(linger);
            check("mbind(whole VMA, MPOL_BIND, MPOL_MF_MOVE)", mbind(p, 4 * PAGE, MPOL_MF_MOVE));
            thread::sleep(linger);
        }
        // Item 2: mlock_fixup -> mlock_vma_pages_range on one whole VMA not yet VM_LOCKED.
        "mlock" => {
            let p = guarded(4);
            touch(p, 4);
            thread::sleep(linger);
            // SAFETY: our own mapping.
            check("mlock(whole VMA)", unsafe { libc::mlock(p as *const libc::c_void, 4 * PAGE) } as libc::c_long);
            thread::sleep(linger);
            check("munlock(whole VMA)", unsafe { libc::munlock(p as *const libc::c_void, 4 * PAGE) } as libc::c_long);
            thread::sleep(linger);
        }
        // Item 3: A (read-only, 2 pages) then B (read-write, 2 pages) adjacent, with no
        // mergeable neighbour on the left; mprotect(A's tail, RW) merges it into B (merge_right
        // without merge_left: A shrinks, B expands).
        "merge-right" => {
            let r = map(0, 6 * PAGE, libc::PROT_NONE);
            let a = map(r + PAGE, 2 * PAGE, libc::PROT_READ);
            let b = map(r + 3 * PAGE, 2 * PAGE, rw);
            thread::sleep(linger);
            // SAFETY: our own mapping.
            check("mprotect(tail of A, RW)", unsafe { libc::mprotect((a + PAGE) as *mut libc::c_void, PAGE, rw) } as libc::c_long);
            assert_eq!(vma_start(b), Some(a + PAGE), "A's tail did not merge into B: this run did not take the merge_right path");
            thread::sleep(linger);
        }
        // Item 5 (vma_link): mremap moves a VMA to the middle of a reservation, where copy_vma
        // cannot merge it and inserts a new VMA with vma_link.
        "mremap" => {
            let p = guarded(2);
            touch(p, 2);
            let r = map(0, 4 * PAGE, libc::PROT_NONE);
            thread::sleep(linger);
            // SAFETY: moves our own mapping over our own reservation.
            let q = unsafe { libc::mremap(p as *mut libc::c_void, 2 * PAGE, 2 * PAGE, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, (r + PAGE) as *mut libc::c_void) };
            assert_eq!(q as usize, r + PAGE, "mremap failed: {}", std::io::Error::last_os_error());
            eprintln!("vmalock-workload: mremap to {q:?} done");
            thread::sleep(linger);
        }
        // Item 5 (do_brk_flags): the heap grows by a new VMA (the VMA ending at the old break
        // gets a mempolicy first, so do_brk_flags cannot just expand it).
        "brk" => {
            // SAFETY: brk(0) only reads the break.
            let cur = unsafe { libc::syscall(libc::SYS_brk, 0usize) } as usize;
            let top = cur.next_multiple_of(PAGE);
            if vma_start(top - 1).is_some() {
                check("mbind(last page below the break)", mbind(top - PAGE, PAGE, 0));
            }
            thread::sleep(linger);
            // SAFETY: grows the break; nothing else in this single-threaded mode uses it now.
            let new = unsafe { libc::syscall(libc::SYS_brk, top + 16 * PAGE) } as usize;
            assert_eq!(new, top + 16 * PAGE, "brk did not grow");
            assert_eq!(vma_start(top), Some(top), "brk expanded the old VMA instead of inserting a new one");
            eprintln!("vmalock-workload: brk inserted a VMA at {top:#x}");
            touch(top, 16);
            thread::sleep(linger);
        }
        _ => panic!("unknown --seed mode {mode} (mbind, mlock, merge-right, mremap, brk)"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode) = args.iter().position(|a| a == "--seed").and_then(|i| args.get(i + 1)) {
        seed(mode, Duration::from_millis(arg(&args, "--linger", 300)));
        return;
    }
    let threads = arg(&args, "--threads", 4);
    let iters = arg(&args, "--iters", 200);
    wait_to_start(&args);
    let handles: Vec<_> = (0..threads).map(|_| thread::spawn(move || churn(iters))).collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
}
