//! Guest RAM.
//!
//! Every RAM range is mapped at a 2 MiB-aligned host address and advised for transparent huge
//! pages, so KVM can back the guest with 2 MiB pages: far fewer nested page faults and TLB
//! misses. Measured in the test host (`docs/architecture.md`), this takes the guest's own time
//! to `/init` from 2.3-4.4 s down to 1.5-1.7 s, level with QEMU, which aligns its RAM the same way.
//!
//! Two backings:
//! - [`Backing::Private`], anonymous private memory: the default, because anonymous memory gets
//!   huge pages on any host with THP, while shared memory (shmem/memfd) gets them only where the
//!   administrator enabled THP for shmem (Debian's default is "never").
//! - [`Backing::SharedMemfd`], one memfd mapped shared: for when another process must map the
//!   guest's memory (vhost-user back ends such as virtiofsd). systemd-vmspawn makes the same
//!   choice: its QEMU gets a memfd memory backend only when virtio-fs is in use.
//!
//! Either way guest RAM is advised `MADV_DONTDUMP`: a core dump of rvmspawn holds the VMM's own
//! state, never the guest's memory (its secrets, and gigabytes of it).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use boot::{GuestMemoryMmap, MemoryLayout};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::Error;

/// What guest RAM is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// Anonymous private memory.
    #[default]
    Private,
    /// A memfd mapped shared, which other processes can map too.
    SharedMemfd,
}

const HUGE_PAGE: usize = 2 << 20;

/// A host mapping that guest memory regions point into; unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is a mapping this struct created and owns; the guest memory
        // regions that point into it are dropped before it (field order in `GuestRam`) and KVM
        // no longer uses it once the VM fd is closed.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Guest memory together with the host mappings that back it.
#[derive(Debug)]
pub struct GuestRam {
    /// The guest's physical memory.
    pub mem: GuestMemoryMmap,
    // Declared after `mem`, so dropped after it.
    _mappings: Vec<Mapping>,
}

fn os_err() -> Error {
    Error::Memory(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOMEM),
    )
}

fn memfd(name: &str, size: u64) -> Result<File, Error> {
    let cname = CString::new(name).map_err(|_| Error::Memory(libc::EINVAL))?;
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags; it returns a new fd or
    // -1, and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_err());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
    Ok(file)
}

/// Map `len` bytes at a 2 MiB-aligned address: anonymous, or `file` from `offset`.
fn map_aligned(len: usize, file: Option<(&File, u64)>) -> Result<(Mapping, i32), Error> {
    let reserve = len
        .checked_add(HUGE_PAGE)
        .ok_or(Error::Memory(libc::ENOMEM))?;
    // SAFETY: a new inaccessible anonymous reservation; no existing mapping is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(os_err());
    }
    let raw = raw as usize;
    let start = (raw + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let end = start + len;
    // SAFETY: both ranges lie inside the reservation made above and are not used by anything.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        if raw + reserve > end {
            libc::munmap(end as *mut libc::c_void, raw + reserve - end);
        }
    }
    let mapping = Mapping {
        addr: start as *mut u8,
        len,
    };
    let (flags, fd, offset) = match file {
        Some((f, off)) => (libc::MAP_SHARED, f.as_raw_fd(), off),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
    };
    let offset = libc::off_t::try_from(offset).map_err(|_| Error::Memory(libc::EOVERFLOW))?;
    // SAFETY: MAP_FIXED replaces exactly the reservation that `mapping` owns (start..end), which
    // nothing else uses; on failure `mapping` unmaps it.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err());
    }
    // SAFETY: advice on our own mapping. It fails harmlessly where THP is not available; huge
    // pages are only a speed-up.
    unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
    // Keep the guest's memory out of core dumps. Unlike the advice above this one matters, so
    // its failure is an error.
    // SAFETY: advice on our own mapping, which changes no contents.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTDUMP) } < 0 {
        return Err(os_err());
    }
    // Not inherited by a fork: the child that destroys the VM at the end (see `teardown`) needs
    // none of it, and copying its page tables would cost the parent time. A failure only costs
    // that time.
    // SAFETY: advice on our own mapping, which changes no contents.
    unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
    Ok((mapping, flags))
}

/// Create guest memory for `layout`.
pub fn create(layout: &MemoryLayout, backing: Backing) -> Result<GuestRam, Error> {
    let total: u64 = layout.ram.iter().map(|r| r.size).sum();
    let file = match backing {
        Backing::Private => None,
        Backing::SharedMemfd => Some(memfd("rvmspawn-guest-ram", total)?),
    };
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(layout.ram.len());
    let mut mappings = Vec::with_capacity(layout.ram.len());
    for r in &layout.ram {
        let size = usize::try_from(r.size).map_err(|_| Error::Memory(libc::ENOMEM))?;
        let (mapping, flags) = map_aligned(size, file.as_ref().map(|f| (f, offset)))?;
        let mut builder = MmapRegionBuilder::new(size)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags);
        if let Some(f) = &file {
            let f = f
                .try_clone()
                .map_err(|e| Error::Memory(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
            builder = builder.with_file_offset(FileOffset::new(f, offset));
        }
        // SAFETY: `mapping` is a live, page-aligned mapping of exactly `size` bytes that
        // outlives the region (see `GuestRam`'s field order).
        let region = unsafe { builder.with_raw_mmap_pointer(mapping.addr) }
            .build()
            .map_err(|_| Error::Memory(libc::EINVAL))?;
        mappings.push(mapping);
        regions.push(GuestRegionMmap::new(region, r.start).ok_or(Error::Memory(libc::EINVAL))?);
        offset += r.size;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|_| Error::Memory(libc::EINVAL))?;
    Ok(GuestRam {
        mem,
        _mappings: mappings,
    })
}

/// TSEG: the top of RAM below 4 GiB, which a machine with SMM keeps for SMM's code and data
/// (see `devices::chipset::Tseg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsegRange {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// KVM's address space for vCPUs in SMM (the slot number's bits 16 and up).
pub const SMM_ADDRESS_SPACE: u32 = 1 << 16;
/// The slot of TSEG in the normal address space, present only while TSEG is open.
const TSEG_SLOT: u32 = 10;

/// Tell KVM about every region of `mem`. With `tseg` (a machine with SMM), every region is
/// also in the SMM address space, and TSEG, in the normal one, is a slot of its own, whose
/// region is returned for [`TsegSlot`] to take away and give back.
pub fn register(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    tseg: Option<TsegRange>,
) -> Result<Option<kvm_userspace_memory_region>, Error> {
    let mut tseg_region = None;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| Error::Memory(libc::EFAULT))?;
        let whole = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        let mut regions = vec![whole];
        if let Some(t) = tseg {
            regions.push(kvm_userspace_memory_region {
                slot: SMM_ADDRESS_SPACE | whole.slot,
                ..whole
            });
            let end = whole.guest_phys_addr + whole.memory_size;
            if t.start > whole.guest_phys_addr && t.start + t.len == end {
                let below = t.start - whole.guest_phys_addr;
                regions[0].memory_size = below;
                let top = kvm_userspace_memory_region {
                    slot: TSEG_SLOT,
                    flags: 0,
                    guest_phys_addr: t.start,
                    memory_size: t.len,
                    userspace_addr: whole.userspace_addr + below,
                };
                regions.push(top);
                tseg_region = Some(top);
            }
        }
        for r in regions {
            // SAFETY: the region describes (part of) a live mapping owned by `GuestRam`, which
            // the machine drops only after the VM, and slots of one address space do not
            // overlap.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e.errno()))?;
        }
    }
    if tseg.is_some() && tseg_region.is_none() {
        return Err(Error::Memory(libc::EINVAL));
    }
    Ok(tseg_region)
}

/// TSEG's slot in the normal address space: there while TSEG is open, gone while it is closed,
/// so that only vCPUs in SMM (whose address space always has it) reach it; an access from
/// outside SMM then exits to the VMM, where nothing answers it (all ones, writes dropped), as
/// QEMU's TSEG "blackhole" does. A separate slot, so that the rest of RAM never goes away, not
/// even for an instant.
pub struct TsegSlot {
    /// The VM.
    pub vm: std::sync::Arc<VmFd>,
    /// The slot as [`register`] made it.
    pub region: kvm_userspace_memory_region,
}

impl devices::chipset::TsegControl for TsegSlot {
    fn set_closed(&mut self, closed: bool) {
        let mut r = self.region;
        if closed {
            r.memory_size = 0;
        }
        // SAFETY: the region describes part of the live RAM mapping, as `register` made it;
        // size 0 deletes the slot.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(r) } {
            // Left as it was: closed stays closed; open stays open (the firmware's own
            // check, reading the register, still sees what it wrote).
            debug!("Failed to switch TSEG's memory slot: {e}");
        }
    }
}

/// A view of `mem` without `hole` at the end of one of its regions, for the devices: their DMA
/// (and the fw_cfg device's) cannot reach TSEG, as in QEMU, where device DMA goes through the
/// address space in which closed TSEG is a hole. Only while TSEG is open could the firmware
/// want DMA there, and OVMF never does. The view's regions point into the same mappings and
/// own nothing, like every region [`create`] makes.
pub fn without(mem: &GuestMemoryMmap, hole: TsegRange) -> Result<GuestMemoryMmap, Error> {
    let mut regions = Vec::with_capacity(mem.num_regions());
    for region in mem.iter() {
        let start = region.start_addr().0;
        let end = start + region.len();
        let len = if hole.start > start && hole.start + hole.len == end {
            hole.start - start
        } else {
            region.len()
        };
        let size = usize::try_from(len).map_err(|_| Error::Memory(libc::EINVAL))?;
        let mut builder = MmapRegionBuilder::new(size)
            .with_mmap_prot(region.prot())
            .with_mmap_flags(region.flags());
        if let Some(f) = region.file_offset() {
            let file = f
                .file()
                .try_clone()
                .map_err(|e| Error::Memory(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
            builder = builder.with_file_offset(FileOffset::new(file, f.start()));
        }
        // SAFETY: the pointer is the start of a live region of `mem` at least `size` bytes
        // long, owned by the same `GuestRam` as `mem`'s regions, which outlives every user
        // of guest memory (the devices are dropped with the machine, before its RAM).
        let view = unsafe { builder.with_raw_mmap_pointer(region.as_ptr()) }
            .build()
            .map_err(|_| Error::Memory(libc::EINVAL))?;
        regions.push(
            GuestRegionMmap::new(view, region.start_addr()).ok_or(Error::Memory(libc::EINVAL))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| Error::Memory(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn both_backings_give_aligned_usable_memory() {
        for backing in [Backing::Private, Backing::SharedMemfd] {
            let layout = MemoryLayout::new(64 << 20);
            let ram = create(&layout, backing).unwrap();
            let region = ram.mem.iter().next().unwrap();
            let host = ram.mem.get_host_address(GuestAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0, "{backing:?}");
            assert_eq!(region.len(), 64 << 20);
            assert_eq!(
                region.file_offset().is_some(),
                backing == Backing::SharedMemfd
            );
            ram.mem
                .write_obj(0xdead_beef_u32, GuestAddress(63 << 20))
                .unwrap();
            assert_eq!(
                ram.mem.read_obj::<u32>(GuestAddress(63 << 20)).unwrap(),
                0xdead_beef
            );
        }
    }

    /// The `VmFlags` of the mapping that starts at `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut current = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, _)) = first.split_once('-')
                && let Ok(start) = usize::from_str_radix(start, 16)
            {
                current = Some(start);
            } else if let Some(flags) = line.strip_prefix("VmFlags:")
                && current == Some(addr)
            {
                return flags.split_whitespace().map(String::from).collect();
            }
        }
        panic!("no mapping at {addr:#x} in /proc/self/smaps");
    }

    #[test]
    fn guest_ram_is_left_out_of_core_dumps() {
        // Two regions (below and above 4 GiB); nothing touches the pages, so this reserves no RAM.
        for backing in [Backing::Private, Backing::SharedMemfd] {
            let layout = MemoryLayout::new(5 << 30);
            let ram = create(&layout, backing).unwrap();
            assert_eq!(ram.mem.num_regions(), 2);
            for region in ram.mem.iter() {
                let host = ram.mem.get_host_address(region.start_addr()).unwrap() as usize;
                let flags = vm_flags(host);
                assert!(
                    flags.iter().any(|f| f == "dd"),
                    "{backing:?} at {:#x}: VmFlags {flags:?}",
                    region.start_addr().0
                );
            }
        }
    }

    #[test]
    fn memory_above_4g_is_a_second_region_of_the_same_memfd() {
        // Only the layout is exercised: nothing touches the pages, so this reserves no RAM.
        let layout = MemoryLayout::new(5 << 30);
        let ram = create(&layout, Backing::SharedMemfd).unwrap();
        let offsets: Vec<u64> = ram
            .mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets, vec![0, layout.ram[0].size]);
    }
}
