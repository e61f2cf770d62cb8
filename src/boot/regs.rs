//! The state of a vCPU at the 64-bit Linux entry point: GDT, identity-mapped
//! page tables, segment and control registers, general registers, FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};
use devices::GuestMemoryMmap;

use crate::memory::{
    BOOT_STACK_POINTER, GDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

/// Errors from writing the boot page tables and GDT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the boot {what} into guest memory: {source}")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// The boot protocol asks for flat segments at __BOOT_CS (0x10) and
/// __BOOT_DS (0x18); a TSS descriptor follows for KVM's sake.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;

/// Build a GDT descriptor from flags (in the positions of bits 52-55 and
/// 40-47, as a 16-bit value `0xF0TT`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The entry-time GDT: null, null, code64, data, TSS.
pub const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, exec/read, accessed, L, G
    gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write, accessed, D/B, G
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];

/// Decode a GDT descriptor into the form KVM takes.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: (((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32) << 12 | 0xfff,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Write the GDT and page tables identity-mapping the first GiB with 2 MiB
/// pages; the kernel replaces both within its first instructions.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let err = |what| move |source| Error::Write { what, source };
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(err("GDT"))?;
    }
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err("PML4"))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(err("PDPT"))?;
    let mut pd = [0u8; 4096];
    for (i, e) in pd.chunks_exact_mut(8).enumerate() {
        // present, writable, 2 MiB page
        e.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START))
        .map_err(err("page directory"))
}

/// Special registers for 64-bit entry, starting from what KVM reports.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[2], BOOT_CS);
    let data = segment_from_gdt(GDT[3], BOOT_DS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[4], BOOT_TSS);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the entry point: rsi points at the zero page.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment_from_gdt(GDT[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.l, cs.db, cs.g, cs.present),
            (0, 0xffff_ffff, 0xb, 1, 0, 1, 1)
        );
        let ds = segment_from_gdt(GDT[3], BOOT_DS);
        assert_eq!((ds.type_, ds.l, ds.db, ds.s), (3, 0, 1, 1));
        let tr = segment_from_gdt(GDT[4], BOOT_TSS);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn long_mode_registers() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ss.selector, 0x18);
        let r = entry_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi), (0x100_0000, ZERO_PAGE_START));
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = crate::memory::create(16).unwrap();
        write_tables(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
    }
}
