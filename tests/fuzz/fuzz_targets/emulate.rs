//! The instruction emulator: any instruction bytes, any registers, and a
//! small guest memory behind the read callback.

#![no_main]

use flint::vstate::emulate::{emulate, Ctx};
use flint_fuzz::Reader;
use kvm_bindings::kvm_regs;
use libfuzzer_sys::fuzz_target;

// 18 u64 registers (rax..r15, rip, rflags), fs_base u64, gs_base u64, 16
// instruction bytes; the rest is memory at address 0 (and the top of the
// address space, so that wrap-around addresses translate too).
fuzz_target!(|bytes: &[u8]| {
    let mut r = Reader(bytes);
    let mut regs = kvm_regs {
        rax: r.u64(),
        rbx: r.u64(),
        rcx: r.u64(),
        rdx: r.u64(),
        rsi: r.u64(),
        rdi: r.u64(),
        rsp: r.u64(),
        rbp: r.u64(),
        r8: r.u64(),
        r9: r.u64(),
        r10: r.u64(),
        r11: r.u64(),
        r12: r.u64(),
        r13: r.u64(),
        r14: r.u64(),
        r15: r.u64(),
        rip: r.u64(),
        rflags: r.u64(),
    };
    let fs_base = r.u64();
    let gs_base = r.u64();
    let insn = r.bytes(16).to_vec();
    let mem = r.rest();
    let mut read = |addr: u64, buf: &mut [u8]| {
        // Low memory, and the same bytes again just below 2^64.
        let at = if addr >= u64::MAX / 2 {
            addr.wrapping_add(mem.len() as u64)
        } else {
            addr
        };
        match usize::try_from(at)
            .ok()
            .and_then(|a| mem.get(a..a.checked_add(buf.len())?))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    };
    let mut ctx = Ctx {
        regs: &mut regs,
        fs_base,
        gs_base,
        read_mem: &mut read,
    };
    let _ = emulate(&insn, &mut ctx);
});
