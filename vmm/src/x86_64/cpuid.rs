//! CPUID for each vCPU: what KVM supports, with the topology and identity fields set per vCPU,
//! and with what KVM cannot virtualise faithfully, or what would only describe the host, hidden.
//!
//! The topology is one socket with one core per vCPU and one thread per core. Leaf 0xB (and 0x1F,
//! when KVM reports it) describe it for every vendor; leaf 4 (Intel) and 0x80000008, 0x8000001D
//! and 0x8000001E (AMD) carry the core count and the vCPU's place in their vendor-specific fields.
//!
//! [`normalize`] hides, whatever KVM reports (it already masks most of these itself, but what
//! the guest sees should not depend on a host kernel's choices), each for the reason given at
//! its constant below:
//! - power and thermal management (EST, TM, TM2, ACPI thermal MSRs, PBE, leaf 6 but for ARAT,
//!   AMD's 0x80000007 but for the invariant TSC): the guest cannot control the host's P-states
//!   or read its sensors, and the values describe the host;
//! - MONITOR/MWAIT (and AMD's MONITORX, leaf 5): KVM runs MWAIT as a no-op, so a guest idling
//!   with it would spin; without it the guest idles with HLT, which KVM turns into a sleep;
//! - the debug store and performance monitoring (DS, DTES64, DS-CPL, PDCM, leaf 0xA, AMD's
//!   PerfCtrExt bits and leaf 0x80000022): rvmspawn offers no PMU, whose counters would time
//!   the host's microarchitecture from inside the guest;
//! - SMX, SKINIT, SDBG, xTPR, CNXT-ID, AMD's watchdog timer: host platform features with no
//!   virtual counterpart;
//! - SGX (leaf 0x12) and resource director monitoring and allocation (leaves 0xF and 0x10): no
//!   enclave memory is given to the guest, and the host's cache partitions are not its;
//! - AMX (and its leaves 0x1D and 0x1E) unless KVM's XSAVE leaf says the tile state can be
//!   enabled, which needs a per-process permission rvmspawn does not ask for.
//!
//! Kept: VMX/SVM as KVM reports them (KVM offers them only when the host enabled nested
//! virtualisation, and systemd-vmspawn's `-cpu host` passes them on likewise), the brand string
//! and the vendor, family and model (the guest's kernel needs them for errata and mitigations,
//! and the brand says nothing more), and the hypervisor bit is set.

use kvm_bindings::{
    CpuId, KVM_CAP_PMU_CAPABILITY, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_PMU_CAP_DISABLE,
    kvm_cpuid_entry2, kvm_enable_cap,
};
use kvm_ioctls::VmFd;

use crate::Error;

/// Bits needed to number `n` items (at least 0).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_leaf(function: u32, index: u32, apic_id: u32, vcpus: u32) -> kvm_cpuid_entry2 {
    // Level type in ECX[15:8]: 1 = SMT, 2 = core, 0 = invalid (end of list).
    let (shift, count, level_type) = match index {
        0 => (0, 1, 1),
        1 => (bits_for(vcpus), vcpus, 2),
        _ => (0, 0, 0),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    }
}

/// Adjust the supported CPUID for vCPU `apic_id` of `vcpus`.
pub fn for_vcpu(supported: &CpuId, apic_id: u32, vcpus: u32) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    let has_1f = supported.as_slice().iter().any(|e| e.function == 0x1f);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX: initial APIC ID [31:24], logical processors per package [23:16].
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((vcpus & 0xff) << 16);
                // EDX bit 28 (HTT): the package field above is valid.
                if vcpus > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            4 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cores = vcpus.min(64) - 1;
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { cores } else { 0 };
                e.eax = (e.eax & 0x3fff) | (cores << 26) | ((sharing & 0xfff) << 14);
            }
            0x8000_0008 => {
                // ECX[7:0]: cores per package - 1 (AMD); ECX[15:12]: APIC ID bits for them.
                e.ecx = (e.ecx & !0xf0ff) | ((vcpus - 1) & 0xff) | (bits_for(vcpus) << 12);
            }
            0x8000_001d => {
                // AMD's leaf 4: EAX[25:14] logical processors sharing the cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { vcpus - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            0x8000_001e => {
                // EAX: extended APIC ID; EBX: core ID [7:0], threads per core - 1 [15:8];
                // ECX: node ID [7:0], nodes per package - 1 [10:8]. One thread per core, one
                // node.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
    normalize(&mut entries);
    for index in 0..3 {
        entries.push(topology_leaf(0xb, index, apic_id, vcpus));
        if has_1f {
            entries.push(topology_leaf(0x1f, index, apic_id, vcpus));
        }
    }
    // The FAM wrapper cannot fail for a list no longer than KVM's own plus six entries.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

// Leaf 1 ECX.
/// 64-bit debug store: no debug store without a PMU.
const L1_ECX_DTES64: u32 = 1 << 2;
/// MONITOR/MWAIT: KVM runs MWAIT as a no-op, so a guest idling with it would spin.
const L1_ECX_MONITOR: u32 = 1 << 3;
/// CPL-qualified debug store: no debug store.
const L1_ECX_DS_CPL: u32 = 1 << 4;
/// Safer mode (TXT, GETSEC): the host platform's, not virtualised.
const L1_ECX_SMX: u32 = 1 << 6;
/// Enhanced SpeedStep: the guest cannot set the host's P-states.
const L1_ECX_EST: u32 = 1 << 7;
/// Thermal monitor 2: the host's sensors.
const L1_ECX_TM2: u32 = 1 << 8;
/// L1 context ID: a host cache mode with no virtual counterpart.
const L1_ECX_CNXT_ID: u32 = 1 << 10;
/// Silicon debug interface MSR: not emulated.
const L1_ECX_SDBG: u32 = 1 << 11;
/// xTPR update control (IA32_MISC_ENABLE bit 23): not emulated.
const L1_ECX_XTPR: u32 = 1 << 14;
/// Perfmon and debug capability MSR: no PMU.
const L1_ECX_PDCM: u32 = 1 << 15;
/// Running under a hypervisor: set.
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
/// Debug store: no PMU.
const L1_EDX_DS: u32 = 1 << 21;
/// Thermal monitor and software clock control MSRs: the host's.
const L1_EDX_ACPI: u32 = 1 << 22;
/// Thermal monitor: the host's sensors.
const L1_EDX_TM: u32 = 1 << 29;
/// Pending break enable (thermal): the host's.
const L1_EDX_PBE: u32 = 1 << 31;
/// Leaf 6 EAX: the APIC timer always runs (KVM's emulated one does, in any C-state): the only
/// thermal and power bit kept.
const L6_EAX_ARAT: u32 = 1 << 2;
// Leaf 7 subleaf 0.
/// EBX: SGX: no enclave memory for the guest.
const L7_EBX_SGX: u32 = 1 << 2;
/// EBX: resource director monitoring: the host's caches.
const L7_EBX_PQM: u32 = 1 << 12;
/// EBX: resource director allocation: the host's caches.
const L7_EBX_PQE: u32 = 1 << 15;
/// ECX: SGX launch control.
const L7_ECX_SGX_LC: u32 = 1 << 30;
/// EDX: AMX tiles, and their BF16 and INT8 instructions.
const L7_EDX_AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
/// Leaf 7 subleaf 1 EAX: AMX FP16.
const L7_1_EAX_AMX_FP16: u32 = 1 << 21;
/// Leaf 7 subleaf 1 EDX: AMX complex.
const L7_1_EDX_AMX_COMPLEX: u32 = 1 << 8;
/// Leaf 0xD subleaf 0 EAX: XTILECFG and XTILEDATA, the state AMX needs enabled in XCR0.
const LD_EAX_AMX_STATE: u32 = (1 << 17) | (1 << 18);
// Leaf 0x80000001 ECX (AMD).
/// Secure init and jump (SKINIT): AMD's SMX.
const LX1_ECX_SKINIT: u32 = 1 << 12;
/// Watchdog timer: the host platform's.
const LX1_ECX_WDT: u32 = 1 << 13;
/// Core, northbridge and last-level-cache performance counter extensions: no PMU.
const LX1_ECX_PERFCTR: u32 = (1 << 23) | (1 << 24) | (1 << 28);
/// MONITORX/MWAITX: as MONITOR.
const LX1_ECX_MONITORX: u32 = 1 << 29;
/// Leaf 0x80000007 EDX: invariant TSC, the only power management bit kept (KVM keeps the
/// guest's TSC running at a constant rate).
const LX7_EDX_INVARIANT_TSC: u32 = 1 << 8;

/// Leaves given as all zeros: MONITOR/MWAIT parameters (5), the PMU (0xA, 0x80000022),
/// resource director monitoring and allocation (0xF, 0x10) and SGX (0x12).
const ZEROED_LEAVES: [u32; 6] = [5, 0xa, 0xf, 0x10, 0x12, 0x8000_0022];
/// AMX's tile and TMUL leaves, zeroed with AMX.
const AMX_LEAVES: [u32; 2] = [0x1d, 0x1e];

/// Hide from the guest what KVM cannot virtualise faithfully or what describes only the host
/// (the list and the reasons are in the module documentation), and set the hypervisor bit.
fn normalize(entries: &mut [kvm_cpuid_entry2]) {
    let amx = entries
        .iter()
        .any(|e| e.function == 0xd && e.index == 0 && e.eax & LD_EAX_AMX_STATE == LD_EAX_AMX_STATE);
    for e in entries.iter_mut() {
        if ZEROED_LEAVES.contains(&e.function) || (!amx && AMX_LEAVES.contains(&e.function)) {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            continue;
        }
        match (e.function, e.index) {
            (1, _) => {
                e.ecx &= !(L1_ECX_DTES64
                    | L1_ECX_MONITOR
                    | L1_ECX_DS_CPL
                    | L1_ECX_SMX
                    | L1_ECX_EST
                    | L1_ECX_TM2
                    | L1_ECX_CNXT_ID
                    | L1_ECX_SDBG
                    | L1_ECX_XTPR
                    | L1_ECX_PDCM);
                e.ecx |= L1_ECX_HYPERVISOR;
                e.edx &= !(L1_EDX_DS | L1_EDX_ACPI | L1_EDX_TM | L1_EDX_PBE);
            }
            (6, _) => {
                (e.eax, e.ebx, e.ecx, e.edx) = (e.eax & L6_EAX_ARAT, 0, 0, 0);
            }
            (7, 0) => {
                e.ebx &= !(L7_EBX_SGX | L7_EBX_PQM | L7_EBX_PQE);
                e.ecx &= !L7_ECX_SGX_LC;
                if !amx {
                    e.edx &= !L7_EDX_AMX;
                }
            }
            (7, 1) if !amx => {
                e.eax &= !L7_1_EAX_AMX_FP16;
                e.edx &= !L7_1_EDX_AMX_COMPLEX;
            }
            (0x8000_0001, _) => {
                e.ecx &= !(LX1_ECX_SKINIT | LX1_ECX_WDT | LX1_ECX_PERFCTR | LX1_ECX_MONITORX);
            }
            (0x8000_0007, _) => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, e.edx & LX7_EDX_INVARIANT_TSC);
            }
            _ => {}
        }
    }
}

/// Turn KVM's virtual PMU off for `vm`, where KVM offers to (`KVM_CAP_PMU_CAPABILITY`; where it
/// does not, its PMU is off already or older kernels keep it). CPUID hiding alone leaves AMD's
/// four legacy counters, which need no CPUID bit. Call before the first vCPU is created.
pub fn disable_pmu(vm: &VmFd) -> Result<(), Error> {
    let offered = vm.check_extension_raw(KVM_CAP_PMU_CAPABILITY.into());
    if offered & KVM_PMU_CAP_DISABLE as i32 == 0 {
        return Ok(());
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_PMU_CAPABILITY,
        args: [KVM_PMU_CAP_DISABLE.into(), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(|e| Error::Kvm("KVM_ENABLE_CAP(KVM_CAP_PMU_CAPABILITY)", e.errno()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0x3000,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    fn leaf(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_package_size() {
        let c = for_vcpu(&supported(), 2, 4);
        let l1 = leaf(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & (1 << 31), 0);
        assert_ne!(l1.edx & (1 << 28), 0);
        let core = leaf(&c, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8 & 0xff, core.edx),
            (2, 4, 2, 2)
        );
        assert_eq!(leaf(&c, 0xb, 0).edx, 2);
        assert_eq!(leaf(&c, 0xb, 2).ecx >> 8 & 0xff, 0);
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
        assert_eq!(leaf(&c, 0x8000_0008, 0).ecx & 0xff, 3);
    }

    #[test]
    fn one_vcpu_has_no_htt() {
        let c = for_vcpu(&supported(), 0, 1);
        assert_eq!(leaf(&c, 1, 0).edx & (1 << 28), 0);
        assert_eq!(leaf(&c, 0xb, 1).eax, 0);
    }

    const ONES: u32 = u32::MAX;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let [eax, ebx, ecx, edx] = regs;
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A host whose every feature bit is set in the leaves the filter looks at, plus leaves it
    /// must leave alone; `amx_state` says whether KVM's XSAVE leaf allows the AMX tile state.
    fn everything_host(amx_state: bool) -> CpuId {
        let xcr0 = if amx_state { 0x6_0007 } else { 0x7 };
        let mut entries = vec![entry(0xd, 0, [xcr0, 0, 0, 0])];
        for (f, i) in [
            (1, 0),
            (5, 0),
            (6, 0),
            (7, 0),
            (7, 1),
            (0xa, 0),
            (0xf, 0),
            (0xf, 1),
            (0x10, 1),
            (0x12, 0),
            (0x1d, 0),
            (0x1e, 0),
            (0x4000_0001, 0),
            (0x8000_0001, 0),
            (0x8000_0002, 0),
            (0x8000_0007, 0),
            (0x8000_0022, 0),
        ] {
            entries.push(entry(f, i, [ONES; 4]));
        }
        CpuId::from_entries(&entries).unwrap()
    }

    /// (leaf, subleaf, register (0 = EAX .. 3 = EDX), bit, name) of every bit hidden.
    const HIDDEN: &[(u32, u32, usize, u32, &str)] = &[
        (1, 0, 2, 2, "DTES64"),
        (1, 0, 2, 3, "MONITOR"),
        (1, 0, 2, 4, "DS-CPL"),
        (1, 0, 2, 6, "SMX"),
        (1, 0, 2, 7, "EST"),
        (1, 0, 2, 8, "TM2"),
        (1, 0, 2, 10, "CNXT-ID"),
        (1, 0, 2, 11, "SDBG"),
        (1, 0, 2, 14, "xTPR"),
        (1, 0, 2, 15, "PDCM"),
        (1, 0, 3, 21, "DS"),
        (1, 0, 3, 22, "ACPI"),
        (1, 0, 3, 29, "TM"),
        (1, 0, 3, 31, "PBE"),
        (7, 0, 1, 2, "SGX"),
        (7, 0, 1, 12, "PQM"),
        (7, 0, 1, 15, "PQE"),
        (7, 0, 2, 30, "SGX-LC"),
        (7, 0, 3, 22, "AMX-BF16"),
        (7, 0, 3, 24, "AMX-TILE"),
        (7, 0, 3, 25, "AMX-INT8"),
        (7, 1, 0, 21, "AMX-FP16"),
        (7, 1, 3, 8, "AMX-COMPLEX"),
        (0x8000_0001, 0, 2, 12, "SKINIT"),
        (0x8000_0001, 0, 2, 13, "WDT"),
        (0x8000_0001, 0, 2, 23, "PerfCtrExtCore"),
        (0x8000_0001, 0, 2, 24, "PerfCtrExtNB"),
        (0x8000_0001, 0, 2, 28, "PerfCtrExtLLC"),
        (0x8000_0001, 0, 2, 29, "MONITORX"),
    ];

    fn regs(e: &kvm_cpuid_entry2) -> [u32; 4] {
        [e.eax, e.ebx, e.ecx, e.edx]
    }

    #[test]
    fn features_kvm_cannot_give_faithfully_are_hidden_and_the_rest_kept() {
        let c = for_vcpu(&everything_host(false), 1, 2);
        // Each hidden bit is clear; every other bit of those registers is still set.
        for &(f, i, r, bit, name) in HIDDEN {
            assert_eq!(regs(&leaf(&c, f, i))[r] & (1 << bit), 0, "{name} shown");
        }
        for (f, i) in [(1, 0), (7, 0), (7, 1), (0x8000_0001, 0)] {
            let got = regs(&leaf(&c, f, i));
            for (r, &got) in got.iter().enumerate() {
                if (f, r) == (1, 1) {
                    continue; // leaf 1 EBX is the topology's (see the test above)
                }
                let hidden = HIDDEN
                    .iter()
                    .filter(|h| (h.0, h.1, h.2) == (f, i, r))
                    .fold(0, |m, h| m | (1 << h.3));
                assert_eq!(got, !hidden, "leaf {f:#x}.{i} register {r}: kept bits lost");
            }
        }
        // Named bits that stay: VMX (nested, when the host's KVM offers it), SSE3, x2APIC.
        let l1 = leaf(&c, 1, 0);
        assert_ne!(l1.ecx & (1 << 5), 0, "VMX");
        assert_ne!(l1.ecx & 1, 0, "SSE3");
        assert_ne!(l1.ecx & (1 << 21), 0, "x2APIC");
        // Thermal and power: ARAT only, and AMD's invariant TSC only.
        assert_eq!(regs(&leaf(&c, 6, 0)), [1 << 2, 0, 0, 0]);
        assert_eq!(regs(&leaf(&c, 0x8000_0007, 0)), [0, 0, 0, 1 << 8]);
        // MONITOR parameters, the PMU, resource director, SGX and AMX leaves are empty.
        for (f, i) in [
            (5, 0),
            (0xa, 0),
            (0xf, 0),
            (0xf, 1),
            (0x10, 1),
            (0x12, 0),
            (0x1d, 0),
            (0x1e, 0),
            (0x8000_0022, 0),
        ] {
            assert_eq!(regs(&leaf(&c, f, i)), [0; 4], "leaf {f:#x}.{i}");
        }
        // Left alone: the brand string and KVM's own paravirtual features.
        assert_eq!(regs(&leaf(&c, 0x8000_0002, 0)), [ONES; 4]);
        assert_eq!(regs(&leaf(&c, 0x4000_0001, 0)), [ONES; 4]);
    }

    #[test]
    fn the_hypervisor_bit_is_set() {
        let c = for_vcpu(&supported(), 0, 1);
        assert_eq!(leaf(&c, 1, 0).ecx, 1 << 31);
    }

    #[test]
    fn amx_stays_where_kvm_allows_its_state() {
        let c = for_vcpu(&everything_host(true), 0, 1);
        assert_eq!(leaf(&c, 7, 0).edx & (0b1101 << 22), 0b1101 << 22);
        assert_ne!(leaf(&c, 7, 1).eax & (1 << 21), 0);
        assert_eq!(regs(&leaf(&c, 0x1d, 0)), [ONES; 4]);
        assert_eq!(regs(&leaf(&c, 0x1e, 0)), [ONES; 4]);
    }

    #[test]
    fn amd_topology_leaves_describe_the_vm() {
        let host = CpuId::from_entries(&[
            // L1 data cache (level 1) and L3 (level 3), as a host with 16 sharing threads.
            entry(0x8000_001d, 0, [(1 << 5) | (15 << 14) | 1, 0, 0, 0]),
            entry(0x8000_001d, 3, [(3 << 5) | (15 << 14) | 3, 0, 0, 0]),
            entry(0x8000_001e, 0, [0x55, 0x1f0f, 0x3ff, 0]),
        ])
        .unwrap();
        let c = for_vcpu(&host, 3, 4);
        assert_eq!((leaf(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((leaf(&c, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
        assert_eq!(leaf(&c, 0x8000_001d, 3).eax & 0x3fff, (3 << 5) | 3);
        assert_eq!(regs(&leaf(&c, 0x8000_001e, 0)), [3, 3, 0, 0]);
    }

    #[test]
    fn the_pmu_is_off_where_kvm_can_turn_it_off() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("note: no /dev/kvm; the PMU switch is not tested here");
            return;
        };
        // AMD's first legacy counter, which exists whenever KVM's PMU is on for the VM.
        const K7_PERFCTR0: u32 = 0xc001_0004;
        let amd = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap()
            .as_slice()
            .iter()
            .any(|e| e.function == 0 && e.ecx == u32::from_le_bytes(*b"cAMD"));
        let counters = |disable: bool| {
            let vm = kvm.create_vm().unwrap();
            let offered = vm.check_extension_raw(KVM_CAP_PMU_CAPABILITY.into());
            if disable {
                disable_pmu(&vm).unwrap();
            }
            let vcpu = vm.create_vcpu(0).unwrap();
            let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                index: K7_PERFCTR0,
                ..Default::default()
            }])
            .unwrap();
            (offered, vcpu.get_msrs(&mut msrs).unwrap())
        };
        let (offered, before) = counters(false);
        if !amd || offered & KVM_PMU_CAP_DISABLE as i32 == 0 || before != 1 {
            eprintln!(
                "note: KVM here has no PMU to turn off (or is not AMD); the PMU switch is not \
                 tested here"
            );
            return;
        }
        assert_eq!(counters(true).1, 0, "a PMU counter after disable_pmu");
    }
}
