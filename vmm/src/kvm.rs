//! Opening KVM and checking that it can do what the machine needs.

use std::os::fd::{FromRawFd, IntoRawFd};

use kvm_ioctls::{Cap, Kvm};

use crate::Error;
use crate::config::KvmSource;

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
