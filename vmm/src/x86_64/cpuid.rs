//! CPUID for each vCPU: what KVM supports, with the topology and identity fields set per vCPU.
//!
//! The topology is one socket with one core per vCPU and one thread per core. Leaf 0xB (and 0x1F,
//! when KVM reports it) describe it for every vendor; leaf 4 (Intel) and 0x80000008 (AMD) carry
//! the core count in their vendor-specific fields.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

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
                // ECX bit 31: running under a hypervisor.
                e.ecx |= 1 << 31;
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
            _ => {}
        }
    }
    for index in 0..3 {
        entries.push(topology_leaf(0xb, index, apic_id, vcpus));
        if has_1f {
            entries.push(topology_leaf(0x1f, index, apic_id, vcpus));
        }
    }
    // The FAM wrapper cannot fail for a list no longer than KVM's own plus six entries.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
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
}
