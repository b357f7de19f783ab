//! virtio-input (virtio 1.2 section 5.8): a keyboard and an absolute-pointing tablet, so the
//! guest gets the host window's keys and pointer without any PS/2 emulation (Linux's
//! `virtio_input` driver turns them into ordinary evdev devices).
//!
//! The host's window thread queues events with [`InputEvents::push`], in batches that usually
//! end with an `EV_SYN`. The queue is bounded ([`MAX_PENDING`] events): a batch that does not fit
//! is dropped whole (and counted), so the window never blocks and memory never grows. The
//! device's thread moves queued events into the buffers the driver posts on the event queue,
//! one 8-byte event per buffer, as soon as both are there: events pushed while the guest has
//! no free buffer wait on the host side. A reset (and so a guest reboot) forgets what is
//! queued, so keys from before it are never replayed.
//!
//! The status queue carries the guest's LED state (Caps Lock, ...); its buffers are returned
//! unread.
//!
//! The config space answers the driver's `select`/`subsel` questions: name, IDs, and which
//! event types, codes and axis ranges each kind of device has.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, GuestMemoryMmap, Interrupt, QueueWorker, VirtioDevice, VirtioError,
    read_config_bytes, serve_queue,
};

/// Size of both queues.
pub const QUEUE_SIZE: u16 = 64;
/// The event queue (device to driver: input events).
pub const EVENTQ: u16 = 0;
/// The status queue (driver to device: LED state).
pub const STATUSQ: u16 = 1;
/// Most events held on the host side until the guest takes them.
pub const MAX_PENDING: usize = 4096;
/// The largest coordinate of the tablet's axes (both start at 0).
pub const TABLET_MAX: u32 = 32767;

/// Event type: end of a group of events that belong together.
pub const EV_SYN: u16 = 0x00;
/// Event type: a key or button changed state.
pub const EV_KEY: u16 = 0x01;
/// Event type: relative movement (the wheel).
pub const EV_REL: u16 = 0x02;
/// Event type: absolute position.
pub const EV_ABS: u16 = 0x03;
/// Event type: LEDs (the status queue's events).
pub const EV_LED: u16 = 0x11;
/// Event type: key auto-repeat.
pub const EV_REP: u16 = 0x14;
/// `EV_SYN` code that ends a group.
pub const SYN_REPORT: u16 = 0;
/// Absolute axis: X.
pub const ABS_X: u16 = 0x00;
/// Absolute axis: Y.
pub const ABS_Y: u16 = 0x01;
/// Relative axis: the vertical wheel.
pub const REL_WHEEL: u16 = 0x08;
/// Left mouse button.
pub const BTN_LEFT: u16 = 0x110;
/// Right mouse button.
pub const BTN_RIGHT: u16 = 0x111;
/// Middle mouse button.
pub const BTN_MIDDLE: u16 = 0x112;
/// LED: Num Lock.
pub const LED_NUML: u16 = 0;
/// LED: Caps Lock.
pub const LED_CAPSL: u16 = 1;
/// LED: Scroll Lock.
pub const LED_SCROLLL: u16 = 2;
/// The highest key code the keyboard offers (`KEY_MICMUTE`); it offers every code from
/// `KEY_ESC` (1) up to it.
pub const KEY_MAX_OFFERED: u16 = 248;

/// The guest driver's name for the keyboard.
const KEYBOARD_NAME: &str = "rvmspawn Virtio Keyboard";
/// The guest driver's name for the tablet.
const TABLET_NAME: &str = "rvmspawn Virtio Tablet";

/// `select` values (`enum virtio_input_config_select`).
const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;

/// `BUS_VIRTUAL` from `linux/input.h`.
const BUS_VIRTUAL: u16 = 0x06;
/// The vendor ID QEMU's virtio-input devices report (that of its emulated USB HID devices);
/// Linux only shows it to user space.
const VENDOR: u16 = 0x0627;

/// Offset of the union in `struct virtio_input_config`.
const UNION_AT: usize = 8;
/// Size of the union.
const UNION_SIZE: usize = 128;
/// Size of `struct virtio_input_config`.
const CONFIG_SIZE: usize = UNION_AT + UNION_SIZE;

/// One input event as the driver receives it: `struct virtio_input_event` (le16 type, le16
/// code, le32 value), the same meaning as Linux's evdev events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_KEY`, `EV_ABS`, ...).
    pub kind: u16,
    /// Key, button or axis code.
    pub code: u16,
    /// Value: 1 pressed / 0 released / 2 repeat for keys, a position for `EV_ABS`, a signed
    /// delta (two's complement) for `EV_REL`.
    pub value: u32,
}

impl InputEvent {
    /// An event of any type.
    pub const fn new(kind: u16, code: u16, value: u32) -> InputEvent {
        InputEvent { kind, code, value }
    }

    /// `EV_SYN`/`SYN_REPORT`: ends a batch.
    pub const fn syn() -> InputEvent {
        InputEvent::new(EV_SYN, SYN_REPORT, 0)
    }

    /// A key or button pressed (`true`) or released.
    pub const fn key(code: u16, pressed: bool) -> InputEvent {
        InputEvent::new(EV_KEY, code, pressed as u32)
    }

    /// An absolute position on `axis` (0..=[`TABLET_MAX`] for the tablet).
    pub const fn abs(axis: u16, value: u32) -> InputEvent {
        InputEvent::new(EV_ABS, axis, value)
    }

    /// A relative movement on `axis` (for the wheel: positive is away from the user).
    pub const fn rel(axis: u16, delta: i32) -> InputEvent {
        InputEvent::new(EV_REL, axis, delta as u32)
    }

    /// The event in the wire format.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// Which device this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A keyboard: every key code from `KEY_ESC` to `KEY_MICMUTE`, auto-repeat, and the Num,
    /// Caps and Scroll Lock LEDs.
    Keyboard,
    /// An absolute pointer: `ABS_X`/`ABS_Y` from 0 to [`TABLET_MAX`], the left, right and
    /// middle buttons, and the wheel.
    Tablet,
}

#[derive(Debug)]
struct Pending {
    queue: VecDeque<InputEvent>,
    dropped: u64,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the device's thread: events were queued.
    wake: EventFd,
}

/// The events on their way from the host's window to one input device: a cheap, cloneable
/// handle that the window's thread pushes into and the device takes from. It outlives device
/// resets and machine rebuilds (the device of a rebooted machine is given the same handle).
#[derive(Debug, Clone)]
pub struct InputEvents {
    shared: Arc<Shared>,
}

impl InputEvents {
    /// An empty queue.
    pub fn new() -> io::Result<InputEvents> {
        Ok(InputEvents {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending {
                    // Allocated once: pushing never allocates.
                    queue: VecDeque::with_capacity(MAX_PENDING),
                    dropped: 0,
                }),
                wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a batch of events for the guest (usually ending with [`InputEvent::syn`]). When
    /// the whole batch does not fit in the [`MAX_PENDING`] events the queue holds, it is
    /// dropped whole (a half-delivered batch could leave a key down) and counted in
    /// [`InputEvents::dropped`]. Never waits for the guest.
    pub fn push(&self, events: &[InputEvent]) {
        if events.is_empty() {
            return;
        }
        let mut p = self.lock();
        if events.len() > MAX_PENDING - p.queue.len() {
            p.dropped = p.dropped.saturating_add(events.len() as u64);
            return;
        }
        p.queue.extend(events.iter().copied());
        drop(p);
        let _ = self.shared.wake.write(1);
    }

    /// Events queued and not yet taken by the guest.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Forget every queued event.
    fn clear(&self) {
        self.lock().queue.clear();
        // A wake-up for events that are gone is harmless, but there is no need to keep it.
        let _ = self.shared.wake.read();
    }
}

/// A virtio-input device: a keyboard or a tablet.
#[derive(Debug)]
pub struct Input {
    kind: InputKind,
    events: InputEvents,
    /// The `struct virtio_input_config` for the driver's current `select` and `subsel`.
    config: [u8; CONFIG_SIZE],
    worker: Option<QueueWorker>,
}

impl Input {
    /// A device of `kind` whose events come from `events`.
    pub fn new(kind: InputKind, events: InputEvents) -> Input {
        Input {
            kind,
            events,
            config: config_for(kind, 0, 0),
            worker: None,
        }
    }
}

/// A bitmap of `bits` as the config union holds it; returns (size, union), the size being the
/// bytes up to the last non-zero one.
fn bitmap(bits: impl IntoIterator<Item = u16>) -> (u8, [u8; UNION_SIZE]) {
    let mut u = [0u8; UNION_SIZE];
    let mut size = 0;
    for bit in bits {
        let byte = usize::from(bit / 8);
        if let Some(b) = u.get_mut(byte) {
            *b |= 1 << (bit % 8);
            size = size.max(byte + 1);
        }
    }
    (size as u8, u)
}

/// The union's contents and size for one question.
fn answer(kind: InputKind, select: u8, subsel: u8) -> (u8, [u8; UNION_SIZE]) {
    let mut u = [0u8; UNION_SIZE];
    let none = (0, [0u8; UNION_SIZE]);
    match (select, subsel) {
        (CFG_ID_NAME, _) => {
            let name = match kind {
                InputKind::Keyboard => KEYBOARD_NAME,
                InputKind::Tablet => TABLET_NAME,
            }
            .as_bytes();
            u[..name.len()].copy_from_slice(name);
            (name.len() as u8, u)
        }
        (CFG_ID_SERIAL, _) | (CFG_PROP_BITS, _) => none,
        (CFG_ID_DEVIDS, _) => {
            let product: u16 = match kind {
                InputKind::Keyboard => 1,
                InputKind::Tablet => 3,
            };
            for (i, v) in [BUS_VIRTUAL, VENDOR, product, 1].into_iter().enumerate() {
                u[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
            }
            (8, u)
        }
        (CFG_EV_BITS, t) => match (kind, u16::from(t)) {
            (InputKind::Keyboard, EV_KEY) => bitmap(1..=KEY_MAX_OFFERED),
            // Linux looks only at the size: non-zero turns auto-repeat on.
            (InputKind::Keyboard, EV_REP) => bitmap([0]),
            (InputKind::Keyboard, EV_LED) => bitmap([LED_NUML, LED_CAPSL, LED_SCROLLL]),
            (InputKind::Tablet, EV_KEY) => bitmap([BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
            (InputKind::Tablet, EV_REL) => bitmap([REL_WHEEL]),
            (InputKind::Tablet, EV_ABS) => bitmap([ABS_X, ABS_Y]),
            _ => none,
        },
        (CFG_ABS_INFO, axis) => match (kind, u16::from(axis)) {
            (InputKind::Tablet, ABS_X | ABS_Y) => {
                // struct virtio_input_absinfo: min, max, fuzz, flat, res.
                for (i, v) in [0, TABLET_MAX, 0, 0, 0].into_iter().enumerate() {
                    u[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
                }
                (20, u)
            }
            _ => none,
        },
        _ => none,
    }
}

/// `struct virtio_input_config` for the question (`select`, `subsel`).
fn config_for(kind: InputKind, select: u8, subsel: u8) -> [u8; CONFIG_SIZE] {
    let (size, u) = answer(kind, select, subsel);
    let mut c = [0u8; CONFIG_SIZE];
    c[0] = select;
    c[1] = subsel;
    c[2] = size;
    c[UNION_AT..].copy_from_slice(&u);
    c
}

/// Write `bytes` into the device-writable buffers of `chain`, all of it or nothing: false (and
/// guest memory untouched) when the chain's writable part is too short, or when a buffer lies
/// outside guest memory.
fn write_event<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>, bytes: &[u8; 8]) -> bool
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    // At most one piece per byte.
    let mut pieces = [(GuestAddress(0), 0usize); 8];
    let mut n = 0;
    let mut total = 0;
    for d in chain.writable() {
        if total == bytes.len() {
            break;
        }
        let len = (d.len() as usize).min(bytes.len() - total);
        if len == 0 {
            continue;
        }
        pieces[n] = (d.addr(), len);
        n += 1;
        total += len;
    }
    if total < bytes.len() {
        return false;
    }
    let mut at = 0;
    for &(addr, len) in &pieces[..n] {
        if mem.write_slice(&bytes[at..at + len], addr).is_err() {
            return false;
        }
        at += len;
    }
    true
}

/// The queue work of one activation.
struct Engine {
    mem: GuestMemoryMmap,
    eventq: Queue,
    statusq: Queue,
    interrupt: Arc<dyn Interrupt>,
    events: InputEvents,
}

impl Engine {
    /// Move queued events into the driver's event buffers. False when the driver broke the
    /// ring.
    fn fill_events(&mut self) -> bool {
        let mut p = self.events.lock();
        let mut used_any = false;
        let result = (|| -> Result<(), virtio_queue::Error> {
            while let Some(event) = p.queue.front().copied() {
                let Some(chain) = self.eventq.iter(&self.mem)?.next() else {
                    // No buffer: ask to be told of the next one; go on if it came meanwhile.
                    if self.eventq.enable_notification(&self.mem)? {
                        continue;
                    }
                    return Ok(());
                };
                let head = chain.head_index();
                let len = if write_event(&self.mem, chain, &event.to_bytes()) {
                    // An event leaves the queue only once it is in guest memory.
                    p.queue.pop_front();
                    8
                } else {
                    0
                };
                self.eventq.add_used(&self.mem, head, len)?;
                used_any = true;
            }
            // Keep the driver's notifications of new buffers coming (EVENT_IDX).
            self.eventq.enable_notification(&self.mem)?;
            Ok(())
        })();
        drop(p);
        if result.is_err() {
            self.interrupt.needs_reset();
            return false;
        }
        if used_any && self.eventq.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.queue(EVENTQ);
        }
        true
    }

    /// Return the driver's status buffers (LED changes), unread. False when the driver broke
    /// the ring.
    fn serve_status(&mut self) -> bool {
        serve_queue(
            &mut self.statusq,
            &self.mem,
            self.interrupt.as_ref(),
            STATUSQ,
            |_, _| 0,
        )
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_INPUT as u16
    }

    fn pci_class(&self) -> u32 {
        // Input device controller, "other".
        0x09_80_00
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// Only `select` (offset 0) and `subsel` (offset 1) are writable, with writes of any size
    /// and any values; the rest is ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let (mut select, mut subsel) = (self.config[0], self.config[1]);
        // Only the first two bytes of a write can land on offsets 0 and 1.
        for (i, &b) in data.iter().enumerate().take(2) {
            match offset.checked_add(i as u64) {
                Some(0) => select = b,
                Some(1) => subsel = b,
                _ => {}
            }
        }
        self.config = config_for(self.kind, select, subsel);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        self.reset();
        let mut eventq = None;
        let mut statusq = None;
        for q in a.queues {
            match q.index {
                EVENTQ => eventq = Some((q.queue, q.notify)),
                STATUSQ => statusq = Some((q.queue, q.notify)),
                _ => {}
            }
        }
        let (eventq, eventq_notify) = eventq.ok_or(VirtioError::BadQueue(EVENTQ))?;
        let (statusq, statusq_notify) = statusq.ok_or(VirtioError::BadQueue(STATUSQ))?;
        let wake = self
            .events
            .shared
            .wake
            .try_clone()
            .map_err(VirtioError::Thread)?;
        let mut engine = Engine {
            mem: a.mem,
            eventq,
            statusq,
            interrupt: a.interrupt,
            events: self.events.clone(),
        };
        let worker = QueueWorker::spawn_loop("virtio-input".into(), move |kill| {
            let mut serving = engine.serve_status() && engine.fill_events();
            let fds = [
                (eventq_notify.as_raw_fd(), true),
                (statusq_notify.as_raw_fd(), true),
                (wake.as_raw_fd(), true),
            ];
            let mut ready = [false; 3];
            loop {
                if !super::wait_ready(&kill, &fds, &mut ready) {
                    return;
                }
                // Every readable eventfd is read, served or not: poll is level-triggered.
                let (mut status, mut fill) = (false, false);
                if ready[0] {
                    let _ = eventq_notify.read();
                    fill = true;
                }
                if ready[1] {
                    let _ = statusq_notify.read();
                    status = true;
                }
                if ready[2] {
                    let _ = wake.read();
                    fill = true;
                }
                // Once the driver broke a ring, nothing more is served until the reset.
                if serving && status {
                    serving = engine.serve_status();
                }
                if serving && fill {
                    serving = engine.fill_events();
                }
            }
        })
        .map_err(VirtioError::Thread)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        // The thread is gone before the queue is emptied: nothing is delivered afterwards.
        self.worker = None;
        self.events.clear();
        self.config = config_for(self.kind, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::virtio::testing::{Counts, F_WRITE, QSIZE, Ring, activate_two, wait};

    const MEM: usize = 0x10_0000;
    /// Each queue's rings: descriptor table, avail, used.
    const EVENTQ_AT: [u64; 3] = [0x1000, 0x2000, 0x3000];
    const STATUSQ_AT: [u64; 3] = [0x4000, 0x5000, 0x6000];
    const KEY_A: u16 = 30;

    /// An activated device with both queues in test memory.
    struct Rig {
        mem: GuestMemoryMmap,
        dev: Input,
        events: InputEvents,
        eventq: Ring,
        statusq: Ring,
        eventq_notify: EventFd,
        statusq_notify: EventFd,
        irq: Arc<Counts>,
    }

    impl Rig {
        fn new(kind: InputKind) -> Rig {
            Rig::with_events(kind, InputEvents::new().unwrap())
        }

        fn with_events(kind: InputKind, events: InputEvents) -> Rig {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
            let mut dev = Input::new(kind, events.clone());
            let (eventq, statusq) = (Ring::new(EVENTQ_AT), Ring::new(STATUSQ_AT));
            let (irq, [eventq_notify, statusq_notify]) =
                activate_two(&mut dev, &mem, [&eventq, &statusq], 0);
            Rig {
                mem,
                dev,
                events,
                eventq,
                statusq,
                eventq_notify,
                statusq_notify,
                irq,
            }
        }

        /// Post an 8-byte event buffer at `at` (filled with a canary) and notify.
        fn post(&mut self, at: u64) -> u16 {
            self.post_chain(&[(at, 8, F_WRITE)])
        }

        fn post_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
            for &(at, len, _) in descs {
                if at + u64::from(len) <= MEM as u64 {
                    self.mem
                        .write_slice(&vec![0xee; len as usize], GuestAddress(at))
                        .unwrap();
                }
            }
            let head = self.eventq.chain(&self.mem, descs);
            self.eventq_notify.write(1).unwrap();
            head
        }

        fn read8(&self, at: u64) -> [u8; 8] {
            self.mem.read_obj(GuestAddress(at)).unwrap()
        }
    }

    /// Ask the device (`select`, `subsel`) with one-byte writes; returns (size, union).
    fn ask(dev: &mut Input, select: u8, subsel: u8) -> (u8, [u8; UNION_SIZE]) {
        dev.write_config(0, &[select]);
        dev.write_config(1, &[subsel]);
        let mut head = [0u8; 3];
        dev.read_config(0, &mut head);
        assert_eq!(head[..2], [select, subsel]);
        let mut u = [0u8; UNION_SIZE];
        dev.read_config(UNION_AT as u64, &mut u);
        (head[2], u)
    }

    fn bit(u: &[u8], n: u16) -> bool {
        u[usize::from(n / 8)] & (1 << (n % 8)) != 0
    }

    fn set_bits(u: &[u8]) -> Vec<u16> {
        (0..(u.len() * 8) as u16).filter(|&n| bit(u, n)).collect()
    }

    fn device(kind: InputKind) -> Input {
        Input::new(kind, InputEvents::new().unwrap())
    }

    #[test]
    fn identity_of_both_kinds() {
        for (kind, name, product) in [
            (InputKind::Keyboard, &b"rvmspawn Virtio Keyboard"[..], 1u8),
            (InputKind::Tablet, &b"rvmspawn Virtio Tablet"[..], 3),
        ] {
            let mut dev = device(kind);
            assert_eq!(dev.device_type(), 18);
            assert_eq!(dev.pci_class(), 0x09_80_00);
            assert_eq!(dev.queue_max_sizes(), &[64, 64]);
            assert_eq!(dev.features(), 0);
            let (size, u) = ask(&mut dev, CFG_ID_NAME, 0);
            assert_eq!(&u[..usize::from(size)], name);
            assert!(u[usize::from(size)..].iter().all(|&b| b == 0));
            let (size, u) = ask(&mut dev, CFG_ID_DEVIDS, 0);
            assert_eq!(size, 8);
            assert_eq!(u[..8], [0x06, 0, 0x27, 0x06, product, 0, 1, 0], "{kind:?}");
            assert_eq!(ask(&mut dev, CFG_ID_SERIAL, 0).0, 0);
            assert_eq!(ask(&mut dev, CFG_PROP_BITS, 0).0, 0);
        }
    }

    #[test]
    fn keyboard_offers_keys_repeat_and_leds() {
        let mut dev = device(InputKind::Keyboard);
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(size, 32);
        assert!(bit(&u, KEY_A));
        assert_eq!(set_bits(&u), (1..=248).collect::<Vec<u16>>());
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_REP as u8);
        assert_eq!(size, 1);
        assert_ne!(u[0], 0);
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_LED as u8);
        assert_eq!((size, u[0]), (1, 0b111));
        for t in [EV_SYN, EV_REL, EV_ABS, 0x04, 0x05, 0x12, 0xff] {
            assert_eq!(
                ask(&mut dev, CFG_EV_BITS, t as u8),
                (0, [0; UNION_SIZE]),
                "{t}"
            );
        }
        assert_eq!(ask(&mut dev, CFG_ABS_INFO, ABS_X as u8).0, 0);
    }

    #[test]
    fn tablet_offers_two_axes_three_buttons_and_the_wheel() {
        let mut dev = device(InputKind::Tablet);
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_ABS as u8);
        assert_eq!(size, 1);
        assert_eq!(set_bits(&u), [ABS_X, ABS_Y]);
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(size, 35);
        assert_eq!(set_bits(&u), [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]);
        let (size, u) = ask(&mut dev, CFG_EV_BITS, EV_REL as u8);
        assert_eq!(size, 2);
        assert_eq!(set_bits(&u), [REL_WHEEL]);
        for t in [EV_REP, EV_LED, EV_SYN] {
            assert_eq!(ask(&mut dev, CFG_EV_BITS, t as u8).0, 0, "{t}");
        }
        for axis in [ABS_X, ABS_Y] {
            let (size, u) = ask(&mut dev, CFG_ABS_INFO, axis as u8);
            assert_eq!(size, 20);
            let words: Vec<u32> = u[..20]
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(words, [0, TABLET_MAX, 0, 0, 0]);
            assert_eq!(words[1], 32767);
        }
        assert_eq!(ask(&mut dev, CFG_ABS_INFO, 2).0, 0);
    }

    #[test]
    fn unknown_questions_get_size_zero() {
        for kind in [InputKind::Keyboard, InputKind::Tablet] {
            let mut dev = device(kind);
            for select in [0u8, 0x04, 0x0f, 0x13, 0x7f, 0xff] {
                for subsel in [0u8, 1, 0xff] {
                    assert_eq!(
                        ask(&mut dev, select, subsel),
                        (0, [0; UNION_SIZE]),
                        "{kind:?} {select} {subsel}"
                    );
                }
            }
        }
    }

    #[test]
    fn config_writes_of_any_shape() {
        let mut dev = device(InputKind::Tablet);
        let mut head = [0u8; 3];
        // select and subsel in one two-byte write.
        dev.write_config(0, &[CFG_EV_BITS, EV_REL as u8]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_EV_BITS, EV_REL as u8, 2]);
        // One byte at a time, subsel first.
        dev.write_config(1, &[EV_ABS as u8]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_EV_BITS, EV_ABS as u8, 1]);
        // A new select keeps subsel: axis 3 has no ABS_INFO.
        dev.write_config(0, &[CFG_ABS_INFO]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_ABS_INFO, EV_ABS as u8, 0]);
        dev.write_config(1, &[ABS_X as u8]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_ABS_INFO, ABS_X as u8, 20]);
        // A write across subsel and size changes subsel only; size and the union are the
        // device's.
        dev.write_config(1, &[ABS_Y as u8, 99, 99, 99]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_ABS_INFO, ABS_Y as u8, 20]);
        // A four-byte write at 0 (some drivers write the whole word).
        dev.write_config(0, &[CFG_ID_NAME, 7, 0xff, 0xff]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_ID_NAME, 7, 22]);
        // Out of range or wrapping: ignored, nothing panics.
        for offset in [2, 3, 8, 100, 135, 136, 4096, u64::MAX - 1, u64::MAX] {
            dev.write_config(offset, &[0x55; 8]);
        }
        dev.write_config(0, &[]);
        dev.read_config(0, &mut head);
        assert_eq!(head, [CFG_ID_NAME, 7, 22]);
        // Reads past the end are zero.
        let mut tail = [0xaau8; 4];
        dev.read_config(134, &mut tail);
        assert_eq!(tail, [0; 4]);
        dev.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 4]);
        // A reset forgets the question.
        dev.reset();
        dev.read_config(0, &mut head);
        assert_eq!(head, [0, 0, 0]);
    }

    #[test]
    fn events_before_and_after_buffers_arrive_in_order() {
        let mut r = Rig::new(InputKind::Tablet);
        // Pushed before the driver has posted any buffer: they wait on the host side.
        let first = [
            InputEvent::abs(ABS_X, 100),
            InputEvent::abs(ABS_Y, TABLET_MAX),
            InputEvent::syn(),
        ];
        r.events.push(&first);
        assert!(wait(&|| r.events.pending() == 3));
        let bufs: Vec<u64> = (0..6).map(|i| 0x10000 + 0x100 * i).collect();
        let mut heads = Vec::new();
        for &at in &bufs[..4] {
            heads.push(r.post(at));
        }
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 3));
        assert_eq!(r.events.pending(), 0);
        assert_eq!(
            r.read8(bufs[0]),
            [3, 0, 0, 0, 100, 0, 0, 0],
            "EV_ABS ABS_X 100"
        );
        assert_eq!(r.read8(bufs[1]), [3, 0, 1, 0, 0xff, 0x7f, 0, 0]);
        assert_eq!(r.read8(bufs[2]), [0; 8]);
        // The fourth buffer waits, untouched.
        assert_eq!(r.read8(bufs[3]), [0xee; 8]);
        assert!(wait(&|| r.irq.queue[usize::from(EVENTQ)]
            .load(Ordering::SeqCst)
            >= 1));

        // Pushed while a buffer is free: delivered at once, then the rest once more buffers
        // come.
        let second = [
            InputEvent::key(BTN_LEFT, true),
            InputEvent::rel(REL_WHEEL, -1),
            InputEvent::syn(),
        ];
        r.events.push(&second);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 4));
        heads.push(r.post(bufs[4]));
        heads.push(r.post(bufs[5]));
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 6));
        let used = r.eventq.used(&r.mem);
        let want: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 8)).collect();
        assert_eq!(used, want);
        let all: Vec<[u8; 8]> = bufs.iter().map(|&at| r.read8(at)).collect();
        let expect: Vec<[u8; 8]> = first.iter().chain(&second).map(|e| e.to_bytes()).collect();
        assert_eq!(all, expect);
        assert_eq!(r.read8(bufs[3]), [1, 0, 0x10, 0x01, 1, 0, 0, 0]);
        assert_eq!(r.read8(bufs[4]), [2, 0, 8, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.irq.reset.load(Ordering::SeqCst), 0);
        r.dev.reset();
    }

    #[test]
    fn a_full_queue_drops_whole_batches() {
        let events = InputEvents::new().unwrap();
        let key = InputEvent::key(KEY_A, true);
        events.push(&vec![key; MAX_PENDING - 1]);
        assert_eq!((events.pending(), events.dropped()), (MAX_PENDING - 1, 0));
        // Two do not fit in the one place left: neither is taken.
        events.push(&[InputEvent::key(KEY_A, false), InputEvent::syn()]);
        assert_eq!((events.pending(), events.dropped()), (MAX_PENDING - 1, 2));
        events.push(&[InputEvent::syn()]);
        assert_eq!((events.pending(), events.dropped()), (MAX_PENDING, 2));
        for _ in 0..3 {
            events.push(&[InputEvent::syn()]);
        }
        events.push(&vec![key; 2 * MAX_PENDING]);
        events.push(&[]);
        assert_eq!(
            (events.pending(), events.dropped()),
            (MAX_PENDING, 2 + 3 + 2 * MAX_PENDING as u64)
        );
        // A batch bigger than the whole queue never fits, even in an empty one.
        let empty = InputEvents::new().unwrap();
        empty.push(&vec![key; MAX_PENDING + 1]);
        assert_eq!(
            (empty.pending(), empty.dropped()),
            (0, MAX_PENDING as u64 + 1)
        );
        empty.push(&vec![key; MAX_PENDING]);
        assert_eq!(empty.pending(), MAX_PENDING);

        // What was kept reaches the guest in order: the accepted SYN is last.
        let mut r = Rig::new(InputKind::Keyboard);
        r.events.push(&vec![key; MAX_PENDING - 1]);
        r.events
            .push(&[InputEvent::key(KEY_A, false), InputEvent::syn()]);
        r.events.push(&[InputEvent::syn()]);
        assert_eq!(r.events.pending(), MAX_PENDING);
        assert_eq!(r.events.dropped(), 2);
        // Drain all but the last two through the guest, a queue's worth at a time.
        let mut delivered = 0;
        while delivered < MAX_PENDING - 2 {
            let n = (MAX_PENDING - 2 - delivered).min(usize::from(QSIZE));
            for i in 0..n {
                r.post(0x10000 + 8 * i as u64);
            }
            delivered += n;
            assert!(wait(&|| r.events.pending() == MAX_PENDING - delivered));
        }
        r.post(0x20000);
        r.post(0x20008);
        assert!(wait(&|| r.events.pending() == 0));
        assert_eq!(r.read8(0x20000), key.to_bytes());
        assert_eq!(r.read8(0x20008), InputEvent::syn().to_bytes());
        r.dev.reset();
    }

    #[test]
    fn a_short_buffer_is_returned_empty_and_keeps_its_event() {
        let mut r = Rig::new(InputKind::Keyboard);
        let short = r.post_chain(&[(0x10000, 4, F_WRITE)]);
        // Device-readable only: no room at all.
        let readable = r.post_chain(&[(0x10100, 8, 0)]);
        // Outside guest memory.
        let outside = r.post_chain(&[(MEM as u64 - 4, 8, F_WRITE)]);
        // Split over two descriptors: that is room enough.
        let split = r.post_chain(&[(0x10200, 4, F_WRITE), (0x10300, 4, F_WRITE)]);
        let event = InputEvent::key(KEY_A, true);
        r.events.push(&[event]);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 4));
        assert_eq!(
            r.eventq.used(&r.mem),
            [
                (u32::from(short), 0),
                (u32::from(readable), 0),
                (u32::from(outside), 0),
                (u32::from(split), 8)
            ]
        );
        // The refused buffers were not written.
        assert_eq!(r.read8(0x10000)[..4], [0xee; 4]);
        assert_eq!(r.read8(0x10100), [0xee; 8]);
        let mut got = [0u8; 8];
        r.mem
            .read_slice(&mut got[..4], GuestAddress(0x10200))
            .unwrap();
        r.mem
            .read_slice(&mut got[4..], GuestAddress(0x10300))
            .unwrap();
        assert_eq!(got, event.to_bytes());
        assert_eq!(r.events.pending(), 0);
        assert_eq!(r.irq.reset.load(Ordering::SeqCst), 0);

        // A short buffer alone: the event stays until a proper buffer comes.
        r.events.push(&[InputEvent::syn()]);
        let short = r.post_chain(&[(0x11000, 4, F_WRITE)]);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 5));
        assert_eq!(r.eventq.used(&r.mem)[4], (u32::from(short), 0));
        assert_eq!(r.events.pending(), 1);
        let good = r.post(0x12000);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 6));
        assert_eq!(r.eventq.used(&r.mem)[5], (u32::from(good), 8));
        assert_eq!(r.read8(0x12000), InputEvent::syn().to_bytes());
        assert_eq!(r.events.pending(), 0);
        r.dev.reset();
    }

    #[test]
    fn status_buffers_are_returned() {
        let mut r = Rig::new(InputKind::Keyboard);
        // Caps Lock on, as Linux sends it.
        let led = InputEvent::new(EV_LED, LED_CAPSL, 1).to_bytes();
        r.mem.write_slice(&led, GuestAddress(0x30000)).unwrap();
        let a = r.statusq.chain(&r.mem, &[(0x30000, 8, 0)]);
        // Hostile: a huge buffer outside guest memory.
        let b = r.statusq.chain(&r.mem, &[(u64::MAX - 1, u32::MAX, 0)]);
        r.statusq_notify.write(1).unwrap();
        assert!(wait(&|| r.statusq.used(&r.mem).len() == 2));
        assert_eq!(
            r.statusq.used(&r.mem),
            [(u32::from(a), 0), (u32::from(b), 0)]
        );
        assert!(wait(&|| r.irq.queue[usize::from(STATUSQ)]
            .load(Ordering::SeqCst)
            >= 1));
        assert_eq!(r.irq.reset.load(Ordering::SeqCst), 0);
        // The event queue still works.
        r.events.push(&[InputEvent::syn()]);
        r.post(0x10000);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 1));
        r.dev.reset();
    }

    #[test]
    fn reset_and_activation_forget_pending_events() {
        let events = InputEvents::new().unwrap();
        // Typed before the driver started: never delivered.
        events.push(&[InputEvent::key(KEY_A, true), InputEvent::syn()]);
        assert_eq!(events.pending(), 2);
        let mut r = Rig::with_events(InputKind::Keyboard, events.clone());
        assert_eq!(events.pending(), 0);
        // Queued with no buffer, then a reset (a reboot): gone too.
        events.push(&[InputEvent::key(KEY_A, true), InputEvent::syn()]);
        assert_eq!(events.pending(), 2);
        r.dev.reset();
        assert_eq!(events.pending(), 0);
        // Nothing runs after the reset: a posted buffer stays unused.
        events.push(&[InputEvent::key(KEY_A, false)]);
        r.post(0x10000);
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.eventq.used(&r.mem).is_empty());
        assert_eq!(events.pending(), 1);

        // The next machine's device gets the same handle, and only new events.
        let mut r = Rig::with_events(InputKind::Keyboard, events.clone());
        assert_eq!(events.pending(), 0);
        let fresh = InputEvent::key(KEY_A + 1, true);
        r.events.push(&[fresh]);
        r.post(0x10000);
        r.post(0x10008);
        assert!(wait(&|| r.eventq.used(&r.mem).len() == 1));
        assert_eq!(r.read8(0x10000), fresh.to_bytes());
        // Nothing else came.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.eventq.used(&r.mem).len(), 1);
        assert_eq!(r.read8(0x10008), [0xee; 8]);
        r.dev.reset();
    }

    #[test]
    fn a_broken_ring_asks_for_a_reset_and_stops_serving() {
        let mut r = Rig::new(InputKind::Keyboard);
        r.events.push(&[InputEvent::syn()]);
        // An avail index more than a queue ahead of the device's: impossible.
        r.mem
            .write_obj(QSIZE + 5, GuestAddress(EVENTQ_AT[1] + 2))
            .unwrap();
        r.eventq_notify.write(1).unwrap();
        assert!(wait(&|| r.irq.reset.load(Ordering::SeqCst) == 1));
        assert!(r.eventq.used(&r.mem).is_empty());
        // The thread serves nothing more, whatever the driver does, and asks only once.
        r.events.push(&[InputEvent::syn()]);
        r.statusq.chain(&r.mem, &[(0x30000, 8, 0)]);
        r.statusq_notify.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(r.statusq.used(&r.mem).is_empty());
        assert_eq!(r.irq.reset.load(Ordering::SeqCst), 1);
        // A reset stops the thread promptly.
        let t = Instant::now();
        r.dev.reset();
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
