//! User-space emulation of the few instructions a PVM host's in-kernel
//! emulator gives up on (`KVM_EXIT_INTERNAL_ERROR`, emulation suberror).
//!
//! Hardware KVM never exits for these; on PVM the guest kernel's code is
//! interpreted by the host, which lacks some instructions. Each is decoded
//! with iced-x86 and applied to the vCPU's registers here, then the vCPU
//! resumes after it. `int3` is special: it becomes a #BP injected into the
//! guest, whose handler (Linux's int3 self-test, kprobes, static calls) then
//! runs as on hardware.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::kvm_regs;

const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;
const ARITH_FLAGS: u64 = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;

/// Why an instruction could not be emulated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cannot decode instruction bytes {0:02x?}")]
    Decode(Vec<u8>),
    #[error("flint does not emulate `{text}` (bytes {bytes:02x?})")]
    Unsupported { text: String, bytes: Vec<u8> },
    #[error("cannot read guest memory at {0:#x} for an emulated operand")]
    Memory(u64),
}

/// What the vCPU must do after a successful emulation (rip already moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Resume the guest.
    Resume,
    /// Inject #BP (vector 3), as the int3 would have raised.
    InjectBreakpoint,
}

/// Guest state the emulator reads and writes.
pub struct Ctx<'a> {
    pub regs: &'a mut kvm_regs,
    pub fs_base: u64,
    pub gs_base: u64,
    /// Read guest virtual memory; false if the address does not translate.
    pub read_mem: &'a mut dyn FnMut(u64, &mut [u8]) -> bool,
}

fn mnemonic_text(insn: &Instruction) -> String {
    format!("{:?}", insn.mnemonic()).to_ascii_lowercase()
}

/// Decode the first instruction of `bytes` (fetched at `rip`, 64-bit mode).
pub fn decode(bytes: &[u8], rip: u64) -> Result<Instruction, Error> {
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return Err(Error::Decode(bytes.to_vec()));
    }
    Ok(insn)
}

/// Emulate the instruction in `bytes` at the vCPU's rip.
pub fn emulate(bytes: &[u8], ctx: &mut Ctx) -> Result<Outcome, Error> {
    let insn = decode(bytes, ctx.regs.rip)?;
    let len = insn.len() as u64;
    let outcome = match insn.mnemonic() {
        Mnemonic::Int3 => Outcome::InjectBreakpoint,
        // fwait only checks for pending x87 exceptions, which the kernel
        // never leaves unmasked.
        Mnemonic::Wait => Outcome::Resume,
        Mnemonic::Clac => {
            ctx.regs.rflags &= !RFLAGS_AC;
            Outcome::Resume
        }
        Mnemonic::Stac => {
            ctx.regs.rflags |= RFLAGS_AC;
            Outcome::Resume
        }
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => {
            bit_count(&insn, ctx, bytes.get(..insn.len()).unwrap_or(bytes))?;
            Outcome::Resume
        }
        _ => {
            return Err(Error::Unsupported {
                text: mnemonic_text(&insn),
                bytes: bytes.get(..insn.len()).unwrap_or(bytes).to_vec(),
            })
        }
    };
    ctx.regs.rip = ctx.regs.rip.wrapping_add(len);
    Ok(outcome)
}

/// popcnt / lzcnt / tzcnt r, r/m (16, 32 or 64 bits).
fn bit_count(insn: &Instruction, ctx: &mut Ctx, bytes: &[u8]) -> Result<(), Error> {
    let dst = insn.op0_register();
    let unsupported = || Error::Unsupported {
        text: mnemonic_text(insn),
        bytes: bytes.to_vec(),
    };
    // A 16-, 32- or 64-bit register: the shifts below rely on it.
    let n = dst.size();
    if !matches!(n, 2 | 4 | 8) {
        return Err(unsupported());
    }
    let bits = (n * 8) as u32;
    let src = match insn.op1_kind() {
        OpKind::Register => get_reg(ctx.regs, insn.op1_register()),
        OpKind::Memory => {
            let addr = memory_address(insn, ctx);
            let mut buf = [0u8; 8];
            let dst_bytes = buf.get_mut(..n).ok_or_else(unsupported)?;
            if !(ctx.read_mem)(addr, dst_bytes) {
                return Err(Error::Memory(addr));
            }
            u64::from_le_bytes(buf)
        }
        _ => return Err(unsupported()),
    };
    let src = if bits == 64 {
        src
    } else {
        src & ((1u64 << bits) - 1)
    };
    let mut flags = ctx.regs.rflags & !ARITH_FLAGS;
    let result = match insn.mnemonic() {
        Mnemonic::Popcnt => {
            if src == 0 {
                flags |= RFLAGS_ZF;
            }
            u64::from(src.count_ones())
        }
        Mnemonic::Lzcnt => {
            let r = u64::from(src.leading_zeros() - (64 - bits));
            if src == 0 {
                flags |= RFLAGS_CF;
            }
            if r == 0 {
                flags |= RFLAGS_ZF;
            }
            r
        }
        _ => {
            let r = if src == 0 {
                u64::from(bits)
            } else {
                u64::from(src.trailing_zeros())
            };
            if src == 0 {
                flags |= RFLAGS_CF;
            }
            if r == 0 {
                flags |= RFLAGS_ZF;
            }
            r
        }
    };
    ctx.regs.rflags = flags;
    set_reg(ctx.regs, dst, result);
    Ok(())
}

fn memory_address(insn: &Instruction, ctx: &Ctx) -> u64 {
    let base = match insn.memory_base() {
        Register::None => 0,
        // RIP-relative: iced already folded the next rip into the displacement.
        Register::RIP | Register::EIP => 0,
        r => get_reg(ctx.regs, r),
    };
    let index = match insn.memory_index() {
        Register::None => 0,
        r => get_reg(ctx.regs, r).wrapping_mul(u64::from(insn.memory_index_scale())),
    };
    let seg = match insn.memory_segment() {
        Register::FS => ctx.fs_base,
        Register::GS => ctx.gs_base,
        _ => 0,
    };
    seg.wrapping_add(base)
        .wrapping_add(index)
        .wrapping_add(insn.memory_displacement64())
}

fn slot(regs: &mut kvm_regs, full: Register) -> Option<&mut u64> {
    Some(match full {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        Register::RIP => &mut regs.rip,
        _ => return None,
    })
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::BH | Register::CH | Register::DH)
}

/// Read a general register of any width.
pub fn get_reg(regs: &kvm_regs, r: Register) -> u64 {
    let mut copy = *regs;
    let full = slot(&mut copy, r.full_register()).map_or(0, |v| *v);
    match r.size() {
        8 => full,
        4 => full & 0xffff_ffff,
        2 => full & 0xffff,
        1 if is_high_byte(r) => (full >> 8) & 0xff,
        1 => full & 0xff,
        _ => 0,
    }
}

/// Write a general register with x86-64's rules: 32-bit writes zero the
/// upper half, 16- and 8-bit writes keep the other bits.
pub fn set_reg(regs: &mut kvm_regs, r: Register, value: u64) {
    let size = r.size();
    let high = is_high_byte(r);
    if let Some(full) = slot(regs, r.full_register()) {
        *full = match size {
            8 => value,
            4 => value & 0xffff_ffff,
            2 => (*full & !0xffff) | (value & 0xffff),
            1 if high => (*full & !0xff00) | ((value & 0xff) << 8),
            1 => (*full & !0xff) | (value & 0xff),
            _ => *full,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8], regs: &mut kvm_regs, mem: &[u8]) -> Result<Outcome, Error> {
        let mut read = |addr: u64, buf: &mut [u8]| {
            let a = addr as usize;
            if a + buf.len() <= mem.len() {
                buf.copy_from_slice(&mem[a..a + buf.len()]);
                true
            } else {
                false
            }
        };
        let mut ctx = Ctx {
            regs,
            fs_base: 0,
            gs_base: 0x100,
            read_mem: &mut read,
        };
        emulate(bytes, &mut ctx)
    }

    #[test]
    fn int3_becomes_breakpoint() {
        let mut r = kvm_regs {
            rip: 0x1000,
            ..Default::default()
        };
        assert_eq!(
            run(&[0xcc, 0x90], &mut r, &[]),
            Ok(Outcome::InjectBreakpoint)
        );
        assert_eq!(r.rip, 0x1001);
    }

    #[test]
    fn fwait_is_skipped() {
        let mut r = kvm_regs {
            rip: 0x1000,
            ..Default::default()
        };
        assert_eq!(run(&[0x9b], &mut r, &[]), Ok(Outcome::Resume));
        assert_eq!(r.rip, 0x1001);
    }

    #[test]
    fn clac_stac_flip_ac() {
        let mut r = kvm_regs {
            rip: 0,
            rflags: 2,
            ..Default::default()
        };
        run(&[0x0f, 0x01, 0xcb], &mut r, &[]).unwrap(); // stac
        assert_eq!(r.rflags, 2 | RFLAGS_AC);
        assert_eq!(r.rip, 3);
        run(&[0x0f, 0x01, 0xca], &mut r, &[]).unwrap(); // clac
        assert_eq!(r.rflags, 2);
        assert_eq!(r.rip, 6);
    }

    #[test]
    fn popcnt_register_forms() {
        // popcnt rax, rbx
        let mut r = kvm_regs {
            rbx: 0xf0f0,
            rax: u64::MAX,
            rflags: 2 | RFLAGS_CF,
            ..Default::default()
        };
        run(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3], &mut r, &[]).unwrap();
        assert_eq!(r.rax, 8);
        assert_eq!(r.rflags, 2);
        assert_eq!(r.rip, 5);
        // popcnt ecx, edx with zero source: ZF set, upper half of rcx cleared
        let mut r = kvm_regs {
            rcx: u64::MAX,
            rdx: 0xffff_ffff_0000_0000,
            rflags: 2,
            ..Default::default()
        };
        run(&[0xf3, 0x0f, 0xb8, 0xca], &mut r, &[]).unwrap();
        assert_eq!(r.rcx, 0);
        assert_eq!(r.rflags, 2 | RFLAGS_ZF);
    }

    #[test]
    fn popcnt_memory_operand() {
        // popcnt rax, [rdi+8]
        let mut mem = vec![0u8; 32];
        mem[8..16].copy_from_slice(&0x0101_0101u64.to_le_bytes());
        let mut r = kvm_regs {
            rdi: 0,
            rflags: 2,
            ..Default::default()
        };
        run(&[0xf3, 0x48, 0x0f, 0xb8, 0x47, 0x08], &mut r, &mem).unwrap();
        assert_eq!(r.rax, 4);
        // out of range memory is an error, and rip does not move
        let mut r = kvm_regs {
            rdi: 0x1000,
            rip: 0x40,
            ..Default::default()
        };
        assert_eq!(
            run(&[0xf3, 0x48, 0x0f, 0xb8, 0x47, 0x08], &mut r, &mem),
            Err(Error::Memory(0x1008))
        );
        assert_eq!(r.rip, 0x40);
    }

    #[test]
    fn lzcnt_and_tzcnt() {
        // lzcnt eax, ebx
        let mut r = kvm_regs {
            rbx: 1,
            rflags: 2,
            ..Default::default()
        };
        run(&[0xf3, 0x0f, 0xbd, 0xc3], &mut r, &[]).unwrap();
        assert_eq!(r.rax, 31);
        // tzcnt rax, rbx with zero: result = 64, CF
        let mut r = kvm_regs {
            rbx: 0,
            rflags: 2,
            ..Default::default()
        };
        run(&[0xf3, 0x48, 0x0f, 0xbc, 0xc3], &mut r, &[]).unwrap();
        assert_eq!(r.rax, 64);
        assert_eq!(r.rflags, 2 | RFLAGS_CF);
    }

    #[test]
    fn unknown_instructions_are_reported() {
        let mut r = kvm_regs::default();
        let e = run(&[0x0f, 0x01, 0xd0], &mut r, &[]).unwrap_err(); // xgetbv
        assert!(e.to_string().contains("xgetbv"), "{e}");
        assert!(matches!(
            run(&[0xff, 0xff], &mut r, &[]),
            Err(Error::Decode(_))
        ));
        assert_eq!(r.rip, 0);
    }

    #[test]
    fn partial_register_writes() {
        let mut r = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        set_reg(&mut r, Register::AH, 0xaa);
        assert_eq!(r.rax, 0x1122_3344_5566_aa88);
        set_reg(&mut r, Register::AX, 0xbbcc);
        assert_eq!(r.rax, 0x1122_3344_5566_bbcc);
        set_reg(&mut r, Register::EAX, 1);
        assert_eq!(r.rax, 1);
        assert_eq!(get_reg(&r, Register::AL), 1);
    }

    #[test]
    fn bit_count_refuses_a_destination_it_cannot_size() {
        // The decoder only gives popcnt a 16/32/64-bit register; a wider
        // one used to overflow the mask shift.
        let mut insn = Instruction::default();
        insn.set_code(iced_x86::Code::Popcnt_r32_rm32);
        insn.set_op0_kind(OpKind::Register);
        insn.set_op0_register(Register::XMM0);
        insn.set_op1_kind(OpKind::Register);
        insn.set_op1_register(Register::EAX);
        let mut regs = kvm_regs::default();
        let mut read = |_: u64, _: &mut [u8]| false;
        let mut ctx = Ctx {
            regs: &mut regs,
            fs_base: 0,
            gs_base: 0,
            read_mem: &mut read,
        };
        assert!(matches!(
            bit_count(&insn, &mut ctx, &[0xf3, 0x0f, 0xb8, 0xc0]),
            Err(Error::Unsupported { .. })
        ));
    }
}
