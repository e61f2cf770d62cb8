//! CPUID as each vCPU sees it: KVM's supported set, with the topology and
//! identity made true for this VM.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: VMX (Intel virtualization).
const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM (AMD virtualization).
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const ECX_SVM: u32 = 1 << 2;
const EDX_HTT: u32 = 1 << 28;
const CLFLUSH_LINE_QWORDS: u32 = 8;
/// Topology level types in leaf 0xb ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to hold `n` distinct APIC IDs.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrite `entries` (KVM's supported CPUID) for vCPU `cpu_id` of `cpus`:
/// one socket, `threads` (1, or 2 with SMT) threads per core, APIC ID =
/// vCPU index; the hypervisor bit set; no architectural PMU (flint does not
/// virtualize one); no VMX or SVM: a microVM offers no nested
/// virtualization (as Firecracker's), and a guest that loads kvm_amd on a
/// nested host was seen to stop right after it.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpus: u8, threads: u8) {
    let cpus = u32::from(cpus);
    let threads = u32::from(threads.max(1)).min(cpus);
    let cores = cpus / threads;
    let apic_id = u32::from(cpu_id);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx =
                    (apic_id << 24) | (cpus << 16) | (CLFLUSH_LINE_QWORDS << 8) | (e.ebx & 0xff);
                e.ecx = (e.ecx | ECX_HYPERVISOR) & !ECX_VMX;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads
                // sharing this cache - 1 (a core's threads, except shared L3).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { threads - 1 };
                e.eax = (e.eax & 0x3fff) | ((cores - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_FEATURES => e.ecx &= !ECX_SVM,
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = id_bits(threads);
                        e.ebx = threads;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(cpus);
                        e.ebx = cpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts() {
        let mut e = vec![
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0xa, 0),
        ];
        normalize(&mut e, 3, 4, 1);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].ecx, e[1].edx), (1, 0x100, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 4, 0x201, 3));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
        assert_eq!((e[4].eax, e[4].edx), (0, 0));
    }

    #[test]
    fn no_nested_virtualization() {
        let mut e = vec![leaf(1, 0), leaf(LEAF_EXT_FEATURES, 0)];
        e[0].ecx = 0xffff_ffff;
        e[1].ecx = 0xffff_ffff;
        normalize(&mut e, 0, 1, 1);
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_eq!(e[1].ecx & ECX_SVM, 0);
        assert_eq!(e[1].ecx | ECX_SVM, 0xffff_ffff, "only SVM is cleared");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![leaf(1, 0)];
        normalize(&mut e, 0, 1, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[0].ebx >> 24, 0);
    }

    #[test]
    fn cache_leaf_sharing() {
        let mut l1 = leaf(4, 0);
        l1.eax = 1 << 5 | 0x1; // level 1 data cache
        let mut l3 = leaf(4, 3);
        l3.eax = 3 << 5 | 0x3;
        let mut e = vec![l1, l3];
        normalize(&mut e, 0, 8, 1);
        assert_eq!(e[0].eax >> 26, 7);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 7);
    }

    #[test]
    fn smt_gives_two_threads_per_core() {
        let mut l1 = leaf(4, 0);
        l1.eax = 1 << 5 | 0x1;
        let mut e = vec![leaf(0xb, 0), leaf(0xb, 1), l1];
        normalize(&mut e, 5, 4, 2);
        assert_eq!((e[0].eax, e[0].ebx, e[0].edx), (1, 2, 5));
        assert_eq!((e[1].eax, e[1].ebx), (2, 4));
        // Two cores, each L1 shared by its two threads.
        assert_eq!(e[2].eax >> 26, 1);
        assert_eq!((e[2].eax >> 14) & 0xfff, 1);
    }

    #[test]
    fn id_bit_widths() {
        assert_eq!(
            [
                id_bits(1),
                id_bits(2),
                id_bits(3),
                id_bits(4),
                id_bits(5),
                id_bits(254)
            ],
            [0, 1, 2, 2, 3, 8]
        );
    }
}
