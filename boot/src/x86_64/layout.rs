//! Where things live in the guest's physical address space.
//!
//! Low memory below 1 MiB holds the boot structures; RAM runs from 0 up to at most
//! [`MMIO_HOLE_START`], continues above 4 GiB when the guest has more, and the hole in between is
//! kept for the IOAPIC, the local APICs and, later, PCI BARs.

use vm_memory::GuestAddress;

/// GDT for the boot CPU (4 entries of 8 bytes).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: interrupts stay disabled until the kernel loads its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (up to [`PVH_MEMMAP_MAX`] entries).
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Room for the PVH memory map, in entries of 24 bytes.
pub const PVH_MEMMAP_MAX: usize = 32;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-map page tables: PML4, one PDPT and four page directories (4 GiB with 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// x86's COMMAND_LINE_SIZE: the longest command line the kernel accepts, with its NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of conventional memory below the EBDA.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP. They end below
/// [`SMBIOS_START`].
pub const ACPI_START: u64 = 0xe_0000;
/// The SMBIOS 3.0 entry point: the first 16-byte boundary of the range 0xF0000-0xFFFFF that
/// Linux scans for it when there is no EFI, so it is the first anchor the scan meets.
pub const SMBIOS_START: u64 = 0xf_0000;
/// The SMBIOS structure table, right after the 24-byte entry point.
pub const SMBIOS_TABLE_START: u64 = SMBIOS_START + 0x20;
/// The SMBIOS table ends before the reset-vector stub.
pub const SMBIOS_END: u64 = RESET_VECTOR;
/// Room for the SMBIOS structure table (65,488 bytes).
pub const SMBIOS_TABLE_MAX_SIZE: u64 = SMBIOS_END - SMBIOS_TABLE_START;
/// The x86 reset vector (F000:FFF0), where a real-mode restart jumps.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// End of the BIOS area; the kernel is loaded from here up.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit hole for device MMIO (IOAPIC, LAPIC, later PCI).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Where RAM continues above the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// PCI memory window for BARs: the first 512 MiB of the MMIO hole.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
/// Size of the PCI memory window.
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// ECAM (memory-mapped PCI configuration space) for bus 0, right after the window.
pub const PCI_ECAM_START: u64 = PCI_MMIO_START + PCI_MMIO_SIZE;
/// ECAM size for bus 0 alone: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// The TPM's CRB register file (locality 0), where the TCG PC Client platform profile puts it.
pub const TPM_CRB_START: u64 = 0xfed4_0000;
/// Size of the TPM's CRB register file: one 4 KiB page.
pub const TPM_CRB_SIZE: u64 = 0x1000;
/// The local APICs' MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (needed on Intel), below the 16 MiB under 4 GiB that firmware
/// flash may occupy (Debian's OVMF takes the top 4 MiB), as QEMU places it.
pub const KVM_TSS_START: u64 = 0xfeff_d000;
/// KVM's identity-map page (needed on Intel), just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfeff_c000;
/// Lowest address firmware flash may start at: everything from here to 4 GiB is free for it.
pub const FLASH_REGION_START: u64 = 0xff00_0000;
/// Where RAM below 4 GiB ends on the Q35 firmware platform when the guest has 2.75 GiB or
/// more: 2 GiB, as QEMU's q35 machine does, so the ECAM window the firmware puts at
/// 0xB0000000 and the 32-bit PCI window above it stay clear of RAM.
pub const Q35_LOW_RAM_SPLIT: u64 = 0x8000_0000;
/// RAM up to this size stays entirely below the Q35 platform's ECAM window.
pub const Q35_LOW_RAM_MAX: u64 = 0xb000_0000;

// The BIOS area's tables, in order, inside the range the e820 map reserves.
const _: () = assert!(
    ACPI_START < SMBIOS_START
        && SMBIOS_START + 0x18 <= SMBIOS_TABLE_START
        && SMBIOS_TABLE_START < SMBIOS_END
        && SMBIOS_END <= RESET_VECTOR
        && RESET_VECTOR < HIGH_MEMORY_START
);

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical start.
    pub start: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// The guest's RAM split around the MMIO hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// One or two RAM ranges, in ascending order.
    pub ram: Vec<RamRange>,
}

impl MemoryLayout {
    /// Lay out `mem_bytes` of RAM: below the hole first, the rest from 4 GiB.
    pub fn new(mem_bytes: u64) -> Self {
        Self::split(mem_bytes, mem_bytes.min(MMIO_HOLE_START))
    }

    /// The Q35 firmware platform's layout: all RAM below 4 GiB when it stays under the ECAM
    /// window, else 2 GiB below and the rest from 4 GiB (QEMU's q35 split).
    pub fn q35(mem_bytes: u64) -> Self {
        let low = if mem_bytes >= Q35_LOW_RAM_MAX {
            Q35_LOW_RAM_SPLIT
        } else {
            mem_bytes
        };
        Self::split(mem_bytes, low)
    }

    /// `low` bytes from address 0, the rest of `mem_bytes` from 4 GiB.
    fn split(mem_bytes: u64, low: u64) -> Self {
        let mut ram = vec![RamRange {
            start: GuestAddress(0),
            size: low,
        }];
        if mem_bytes > low {
            ram.push(RamRange {
                start: GuestAddress(HIGH_RAM_START),
                size: mem_bytes - low,
            });
        }
        MemoryLayout { ram }
    }

    /// End (exclusive) of RAM below the hole: the ceiling for the initrd.
    pub fn low_ram_end(&self) -> u64 {
        self.ram[0].size
    }

    /// The e820 map: (start, size, type) with type 1 = RAM, 2 = reserved.
    ///
    /// The BIOS area holding the ACPI and SMBIOS tables is reserved so the kernel never reuses
    /// it, and so is the TPM's register page (a guest without a TPM finds nothing there), as a
    /// PC's firmware reserves it.
    pub fn e820(&self) -> Vec<(u64, u64, u32)> {
        const RAM: u32 = 1;
        const RESERVED: u32 = 2;
        let mut map = vec![
            (0, EBDA_START, RAM),
            (ACPI_START, HIGH_MEMORY_START - ACPI_START, RESERVED),
        ];
        if self.low_ram_end() > HIGH_MEMORY_START {
            map.push((
                HIGH_MEMORY_START,
                self.low_ram_end() - HIGH_MEMORY_START,
                RAM,
            ));
        }
        // Linux uses ECAM only where the firmware's memory map reserves it.
        map.push((PCI_ECAM_START, PCI_ECAM_SIZE, RESERVED));
        map.push((TPM_CRB_START, TPM_CRB_SIZE, RESERVED));
        for r in &self.ram[1..] {
            map.push((r.start.0, r.size, RAM));
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_fits_below_the_hole() {
        let l = MemoryLayout::new(512 << 20);
        assert_eq!(l.ram.len(), 1);
        assert_eq!(l.low_ram_end(), 512 << 20);
        let e820 = l.e820();
        let ram: u64 = e820.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
        assert_eq!(ram, (512 << 20) - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn q35_layout_keeps_ram_below_the_ecam_window() {
        let small = MemoryLayout::q35(2 << 30);
        assert_eq!(small.ram.len(), 1);
        assert_eq!(small.low_ram_end(), 2 << 30);
        let big = MemoryLayout::q35(3 << 30);
        assert_eq!(big.low_ram_end(), Q35_LOW_RAM_SPLIT);
        assert_eq!(big.ram[1].start, GuestAddress(HIGH_RAM_START));
        assert_eq!(big.ram[1].size, (3 << 30) - Q35_LOW_RAM_SPLIT);
        const { assert!(KVM_TSS_START + 3 * 4096 <= FLASH_REGION_START) };
    }

    #[test]
    fn the_tpm_page_is_reserved_and_no_ram() {
        for mem in [512 << 20, 4 << 30] {
            let e820 = MemoryLayout::new(mem).e820();
            assert!(
                e820.contains(&(TPM_CRB_START, TPM_CRB_SIZE, 2)),
                "{e820:x?}"
            );
            let tpm = TPM_CRB_START..TPM_CRB_START + TPM_CRB_SIZE;
            for (start, size, ty) in e820.into_iter().filter(|e| e.2 == 1) {
                assert!(
                    start + size <= tpm.start || start >= tpm.end,
                    "{start:#x} {ty}"
                );
            }
        }
        // Inside the MMIO hole, clear of the IOAPIC's and the local APICs' pages.
        const {
            assert!(
                TPM_CRB_START >= IOAPIC_START + 0x1000
                    && TPM_CRB_START + TPM_CRB_SIZE <= APIC_START
            )
        };
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let l = MemoryLayout::new(4 << 30);
        assert_eq!(l.ram.len(), 2);
        assert_eq!(l.ram[0].size, MMIO_HOLE_START);
        assert_eq!(l.ram[1].start, GuestAddress(HIGH_RAM_START));
        assert_eq!(l.ram[1].size, (4 << 30) - MMIO_HOLE_START);
        assert!(l.e820().iter().any(|e| e.0 == HIGH_RAM_START && e.2 == 1));
        // No e820 RAM entry may reach into the hole.
        for (start, size, ty) in l.e820() {
            if ty == 1 && start < HIGH_RAM_START {
                assert!(start + size <= MMIO_HOLE_START);
            }
        }
    }
}
