//! `--console=gui`: the window (the `display` crate) and the devices it feeds, which live for
//! the whole run: each boot's virtio-gpu and virtio-input devices share them, so a guest reboot
//! keeps the window.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use devices::virtio::gpu::{DEFAULT_SIZE, Screen};
use devices::virtio::input::InputEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::Error;

/// What each boot's devices are built from.
#[derive(Debug, Clone)]
pub struct GuiDevices {
    /// The scanout the window shows.
    pub screen: Arc<Screen>,
    /// The keyboard's events.
    pub keyboard: InputEvents,
    /// The tablet's events.
    pub tablet: InputEvents,
}

/// The open window and its devices' shared state.
#[derive(Debug)]
pub struct Gui {
    devices: GuiDevices,
    closed: EventFd,
    // Dropped last: closes the window.
    _display: display::Display,
}

fn host(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Host(what, e)
}

impl Gui {
    /// Open the window titled as vmspawn's (`Virtual Machine NAME`). Without a display in the
    /// environment, or when it cannot be reached: an error naming it, exit status ENXIO.
    pub fn open(name: &str) -> Result<Gui, Error> {
        let fail = |e: display::Error| Error::Display(e.to_string(), e.errno());
        display::check_environment().map_err(fail)?;
        let closed =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(host("eventfd"))?;
        let devices = GuiDevices {
            screen: Screen::new(DEFAULT_SIZE.0, DEFAULT_SIZE.1),
            keyboard: InputEvents::new().map_err(host("eventfd"))?,
            tablet: InputEvents::new().map_err(host("eventfd"))?,
        };
        let signal = closed.try_clone().map_err(host("eventfd"))?;
        let display = display::open(display::Config {
            title: format!("Virtual Machine {name}"),
            screen: devices.screen.clone(),
            keyboard: devices.keyboard.clone(),
            tablet: devices.tablet.clone(),
            on_close: Box::new(move || {
                let _ = signal.write(1);
            }),
            trace: crate::log::debug_enabled()
                .then(|| Box::new(crate::log::line) as display::Trace),
        })
        .map_err(fail)?;
        Ok(Gui {
            devices,
            closed,
            _display: display,
        })
    }

    /// Readable once the user closed the window.
    pub fn closed_fd(&self) -> RawFd {
        self.closed.as_raw_fd()
    }

    /// The state each boot's devices share.
    pub fn devices(&self) -> GuiDevices {
        self.devices.clone()
    }
}
