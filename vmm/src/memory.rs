//! Guest RAM: one memfd, mapped shared, so that later vhost-user back ends (virtiofsd) can map
//! the same pages; registered with KVM one slot per RAM range.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use boot::{GuestMemoryMmap, MemoryLayout};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion};

use crate::Error;

fn memfd(name: &str, size: u64) -> Result<File, Error> {
    let cname = CString::new(name).map_err(|_| Error::Memory(libc::EINVAL))?;
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags; it returns a new fd or
    // -1, and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory(last_errno()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(e.raw_os_error().unwrap_or(libc::ENOMEM)))?;
    Ok(file)
}

pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Create guest memory for `layout`, backed by one memfd.
pub fn create(layout: &MemoryLayout) -> Result<GuestMemoryMmap, Error> {
    let total: u64 = layout.ram.iter().map(|r| r.size).sum();
    let file = memfd("rvmspawn-guest-ram", total)?;
    let mut offset = 0u64;
    let mut ranges = Vec::with_capacity(layout.ram.len());
    for r in &layout.ram {
        let size = usize::try_from(r.size).map_err(|_| Error::Memory(libc::ENOMEM))?;
        let f = file
            .try_clone()
            .map_err(|e| Error::Memory(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
        ranges.push((r.start, size, Some(FileOffset::new(f, offset))));
        offset += r.size;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|_| Error::Memory(libc::ENOMEM))
}

/// Tell KVM about every region of `mem`.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| Error::Memory(libc::EFAULT))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which outlives the VM
        // (the VM is torn down before the memory is dropped), and slots do not overlap.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e.errno()))?;
    }
    Ok(())
}
