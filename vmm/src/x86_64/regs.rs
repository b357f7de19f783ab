//! Registers, MSRs, FPU and local APIC of a vCPU at power-on.
//!
//! Only the boot CPU gets an entry state; the others wait for the guest's INIT/SIPI, which the
//! in-kernel local APIC handles.

use boot::BootEntry;
use boot::x86_64::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START};
use boot::x86_64::loader::{
    BOOT_TSS, LONG_MODE_CODE, LONG_MODE_DATA, PROTECTED_MODE_CODE, Segment,
};
use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;

use crate::Error;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const GDT_ENTRIES: u16 = 5;

/// The register image of a segment as the CPU caches it from a GDT entry.
fn segment(seg: Segment) -> kvm_segment {
    let e = seg.entry;
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: seg.selector,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 0x3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Put the boot CPU at the kernel's entry point in the state its boot protocol requires.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), Error> {
    let kvm = |what: &'static str| move |e: kvm_ioctls::Error| Error::Kvm(what, e.errno());
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = GDT_ENTRIES * 8 - 1;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.tr = segment(BOOT_TSS);
    let data = segment(LONG_MODE_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { rip, zero_page } => {
            sregs.cs = segment(LONG_MODE_CODE);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
        BootEntry::Pvh { rip, start_info } => {
            sregs.cs = segment(PROTECTED_MODE_CODE);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// State every vCPU needs: FPU control words, MSRs and the local APIC's LINT pins.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), Error> {
    let kvm = |what: &'static str| move |e: kvm_ioctls::Error| Error::Kvm(what, e.errno());
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    let msr = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        msr(0x174, 0),             // IA32_SYSENTER_CS
        msr(0x175, 0),             // IA32_SYSENTER_ESP
        msr(0x176, 0),             // IA32_SYSENTER_EIP
        msr(0xc000_0081, 0),       // STAR
        msr(0xc000_0082, 0),       // LSTAR
        msr(0xc000_0083, 0),       // CSTAR
        msr(0xc000_0084, 0),       // SYSCALL_MASK
        msr(0xc000_0102, 0),       // KERNEL_GS_BASE
        msr(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRR default type: enabled, write-back
    ];
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| Error::Kvm("KVM_SET_MSRS", libc::EINVAL))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(Error::Kvm("KVM_SET_MSRS", libc::EINVAL));
    }
    setup_lint(vcpu)
}

/// The local APIC's LINT pins as firmware leaves them on a PC; for a firmware boot this is
/// all rvmspawn changes from KVM's power-on state (the firmware programs the rest).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    let kvm = |what: &'static str| move |e: kvm_ioctls::Error| Error::Kvm(what, e.errno());
    // LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 is the NMI pin, as firmware
    // leaves them on a PC.
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as i8;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_the_gdt() {
        let cs = segment(LONG_MODE_CODE);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.selector, 0x10);
        let ds = segment(LONG_MODE_DATA);
        assert_eq!((ds.l, ds.db, ds.type_, ds.selector), (0, 1, 3, 0x18));
        let pcs = segment(PROTECTED_MODE_CODE);
        assert_eq!((pcs.l, pcs.db, pcs.base), (0, 1, 0));
    }
}
