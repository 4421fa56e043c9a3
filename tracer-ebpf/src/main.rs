//! vmalock's eBPF programs. They collect facts at the hook and leave judging to userspace.
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in core::sync::atomic; the intrinsic lowers to
// BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod emit;
mod fold;
mod kernel;
mod locks;
mod mmap_lock;
mod probes;
mod snapshot;
mod task;
mod vma;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel checks the license string of programs that call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
