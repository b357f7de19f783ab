//! UEFI firmware for rvmspawn, chosen as systemd-vmspawn chooses it.
//!
//! * [`descriptor`]: QEMU's firmware interop descriptors (`/usr/share/qemu/firmware/*.json`).
//! * [`select`](mod@select): the search path, the listing and vmspawn's selection rules;
//!   firmware that requires SMM is passed over only on a host whose KVM lacks SMM.
//! * [`nvram`]: the EFI variable store of a run, kept beside the image or private.
//!
//! Nothing here reads the environment: the caller passes `$XDG_CONFIG_HOME` and friends in.

pub mod descriptor;
mod error;
pub mod nvram;
pub mod select;

pub use descriptor::Descriptor;
pub use error::Error;
pub use select::{
    Firmware, Request, SearchPath, Selection, Skipped, SmmSupport, all_features, list, load, select,
};
