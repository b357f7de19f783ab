//! Opening KVM and checking that it can do what the machine needs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};

use kvm_ioctls::{Cap, Kvm};

use crate::Error;
use crate::config::KvmSource;

/// `_IO(KVMIO, 0x03)`.
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;

/// The only KVM API version there has ever been; anything else is not KVM as we know it.
const KVM_API_VERSION: i32 = 12;

/// Every capability the VMM relies on, with the name it is reported under when missing.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
];

/// Open KVM as configured and check its API version and capabilities.
pub fn open(source: KvmSource) -> Result<Kvm, Error> {
    let kvm = match source {
        KvmSource::Open => Kvm::new().map_err(|e| Error::OpenKvm(e.errno()))?,
        KvmSource::Inherited(fd) => {
            // SAFETY: `fd` is an owned, open file descriptor whose ownership moves into `Kvm`,
            // which closes it when dropped; nothing else refers to it.
            unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) }
        }
    };
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(Error::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::KvmCapMissing(name));
        }
    }
    Ok(kvm)
}

/// Whether firmware that requires SMM can run: the KVM the run will use (`inherited`, the
/// descriptor passed as `kvm`, else `/dev/kvm`) has `KVM_CAP_X86_SMM`. A `/dev/kvm` that cannot
/// be opened counts as able: the run then fails opening it, with that error.
pub fn smm_support(inherited: Option<BorrowedFd<'_>>) -> firmware::SmmSupport {
    let check = |fd: i32| {
        // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and touches no memory; on a
        // descriptor that is not KVM it fails, which reads as "no".
        let r = unsafe {
            libc::ioctl(
                fd,
                KVM_CHECK_EXTENSION,
                kvm_bindings::KVM_CAP_X86_SMM as libc::c_ulong,
            )
        };
        r > 0
    };
    let has = match inherited {
        Some(fd) => check(fd.as_raw_fd()),
        None => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(f) => check(f.as_raw_fd()),
            Err(_) => true,
        },
    };
    if has {
        firmware::SmmSupport::Available
    } else {
        firmware::SmmSupport::Unavailable(
            "this host's KVM does not emulate SMM (no KVM_CAP_X86_SMM)".to_owned(),
        )
    }
}
