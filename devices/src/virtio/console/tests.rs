use std::sync::atomic::Ordering;

use vm_memory::Address;

use super::*;
use crate::virtio::ActiveQueue;
use crate::virtio::testing::{Counts, F_NEXT, F_WRITE, QSIZE, Ring, activate_two, wait};

const MEM: usize = 0x10_0000;
/// Each queue's rings: descriptor table, avail, used.
const RX_AT: [u64; 3] = [0x1000, 0x2000, 0x3000];
const TX_AT: [u64; 3] = [0x4000, 0x5000, 0x6000];

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);
impl Write for Collect {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    port: Arc<ConsolePort>,
    drained: EventFd,
    irq: Arc<Counts>,
    out: Collect,
    engine: Engine,
}

impl Rig {
    fn new() -> Rig {
        Rig::sized(None)
    }

    fn sized(size: Option<(u16, u16)>) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let (rx, tx) = (Ring::new(RX_AT), Ring::new(TX_AT));
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = Arc::new(ConsolePort::new(drained.try_clone().unwrap(), size).unwrap());
        let irq = Arc::new(Counts::default());
        let out = Collect::default();
        let engine = Engine::new(
            mem.clone(),
            rx.queue(&mem),
            tx.queue(&mem),
            irq.clone(),
            port.clone(),
            Arc::new(Mutex::new(Box::new(out.clone()))),
        );
        Rig {
            mem,
            rx,
            tx,
            port,
            drained,
            irq,
            out,
            engine,
        }
    }

    fn output(&self) -> Vec<u8> {
        self.out.0.lock().unwrap().clone()
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }
}

#[test]
fn output_chains_reach_the_writer_whole_and_in_order() {
    let mut r = Rig::new();
    r.mem
        .write_slice(b"hello, ", GuestAddress(0x10000))
        .unwrap();
    r.mem
        .write_slice(b"world\n", GuestAddress(0x20000))
        .unwrap();
    let big: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
    r.mem.write_slice(&big, GuestAddress(0x30000)).unwrap();
    r.tx.chain(&r.mem, &[(0x10000, 7, 0), (0x20000, 6, 0)]);
    r.tx.chain(&r.mem, &[(0x30000, big.len() as u32, 0)]);
    assert!(r.engine.process_tx());
    let mut want = b"hello, world\n".to_vec();
    want.extend(&big);
    assert_eq!(r.output(), want);
    assert_eq!(r.tx.used(&r.mem), [(0, 0), (2, 0)]);
    assert_eq!(r.irq.queue[1].load(Ordering::SeqCst), 1);
}

#[test]
fn output_outside_guest_memory_ends_its_chain_only() {
    let mut r = Rig::new();
    r.mem.write_slice(b"kept", GuestAddress(0x10000)).unwrap();
    r.mem.write_slice(b"next", GuestAddress(0x11000)).unwrap();
    // Runs past the end of guest memory, then one that wraps the address space.
    r.tx.chain(
        &r.mem,
        &[(0x10000, 4, 0), ((MEM - 2) as u64, 8, 0), (0x10000, 4, 0)],
    );
    r.tx.chain(&r.mem, &[(u64::MAX - 1, u32::MAX, 0)]);
    r.tx.chain(&r.mem, &[(0x11000, 4, 0)]);
    assert!(r.engine.process_tx());
    assert_eq!(r.output(), b"keptnext");
    assert_eq!(r.tx.used(&r.mem).len(), 3);
    assert_eq!(r.irq.reset.load(Ordering::SeqCst), 0);
}

#[test]
fn input_fills_posted_buffers_in_order_and_reports_when_drained() {
    let mut r = Rig::new();
    assert_eq!(r.port.enqueue(b"typed by the user"), 17);
    // Split over two buffers of one chain and a second chain.
    r.rx.chain(&r.mem, &[(0x10000, 4, F_WRITE), (0x20000, 8, F_WRITE)]);
    r.rx.chain(&r.mem, &[(0x30000, 64, F_WRITE)]);
    assert!(r.engine.fill_rx());
    assert_eq!(r.read(0x10000, 4), b"type");
    assert_eq!(r.read(0x20000, 8), b"d by the");
    assert_eq!(r.read(0x30000, 5), b" user");
    assert_eq!(r.rx.used(&r.mem), [(0, 12), (2, 5)]);
    assert_eq!(r.port.pending(), 0);
    assert_eq!(r.drained.read().unwrap(), 1);
    assert_eq!(r.irq.queue[0].load(Ordering::SeqCst), 1);
}

#[test]
fn input_waits_for_buffers_and_nothing_typed_is_dropped() {
    let mut r = Rig::new();
    let typed: Vec<u8> = (0..INPUT_CAPACITY + 100).map(|i| (i % 251) as u8).collect();
    // The device takes what fits; the caller keeps the rest.
    let took = r.port.enqueue(&typed);
    assert_eq!(took, INPUT_CAPACITY);
    assert_eq!(r.port.enqueue(b"x"), 0);
    // No buffers posted: the input waits, nothing is signalled.
    assert!(r.engine.fill_rx());
    assert_eq!(r.port.pending(), INPUT_CAPACITY);
    assert!(r.drained.read().is_err());
    // A read-only buffer in the receive queue takes nothing, loses nothing.
    r.rx.chain(&r.mem, &[(0x10000, 64, 0)]);
    // A buffer outside guest memory takes nothing either.
    r.rx.chain(&r.mem, &[((MEM - 1) as u64, 64, F_WRITE)]);
    r.rx.chain(&r.mem, &[(0x20000, 1000, F_WRITE)]);
    assert!(r.engine.fill_rx());
    assert_eq!(r.rx.used(&r.mem), [(0, 0), (1, 0), (2, 1000)]);
    assert_eq!(r.read(0x20000, 1000), &typed[..1000]);
    assert_eq!(r.port.pending(), INPUT_CAPACITY - 1000);
    // Room again: the caller queues the rest, and the guest gets all of it in order.
    assert_eq!(r.port.enqueue(&typed[took..]), 100);
    r.rx.chain(&r.mem, &[(0x30000, 8192, F_WRITE)]);
    assert!(r.engine.fill_rx());
    assert_eq!(r.read(0x30000, typed.len() - 1000), &typed[1000..]);
    assert_eq!(r.drained.read().unwrap(), 1);
}

#[test]
fn a_broken_ring_asks_for_a_reset_and_is_not_served_again() {
    let mut r = Rig::new();
    // The driver claims far more available buffers than the queue holds.
    r.mem
        .write_obj(QSIZE + 5, GuestAddress(TX_AT[1] + 2))
        .unwrap();
    assert!(!r.engine.process_tx());
    assert_eq!(r.irq.reset.load(Ordering::SeqCst), 1);
    r.port.enqueue(b"x");
    r.mem
        .write_obj(QSIZE + 5, GuestAddress(RX_AT[1] + 2))
        .unwrap();
    assert!(!r.engine.fill_rx());
    assert_eq!(r.irq.reset.load(Ordering::SeqCst), 2);
    // The byte stays queued for a driver that resets the device and starts again.
    assert_eq!(r.port.pending(), 1);
}

#[test]
fn a_descriptor_loop_is_refused_without_hanging() {
    let mut r = Rig::new();
    // Two descriptors that point at each other forever.
    for (idx, next) in [(0u16, 1u16), (1, 0)] {
        let at = GuestAddress(TX_AT[0] + 16 * u64::from(idx));
        r.mem.write_obj(0x10000u64, at).unwrap();
        r.mem.write_obj(4u32, at.unchecked_add(8)).unwrap();
        r.mem.write_obj(F_NEXT, at.unchecked_add(12)).unwrap();
        r.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }
    r.mem.write_obj(0u16, GuestAddress(TX_AT[1] + 4)).unwrap();
    r.mem.write_obj(1u16, GuestAddress(TX_AT[1] + 2)).unwrap();
    assert!(r.engine.process_tx());
    // At most one pass over the queue's descriptors was written out.
    assert!(r.output().len() <= 4 * usize::from(QSIZE));
}

#[test]
fn the_size_is_offered_only_when_known_and_a_change_interrupts_the_driver() {
    let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let unknown = Console::new(
        Arc::new(ConsolePort::new(drained.try_clone().unwrap(), None).unwrap()),
        Box::new(Collect::default()),
    );
    assert_eq!(unknown.features(), 0);
    let port = Arc::new(ConsolePort::new(drained, Some((80, 24))).unwrap());
    let mut dev = Console::new(port.clone(), Box::new(Collect::default()));
    assert_eq!(dev.features(), F_SIZE);
    let mut config = [0u8; 12];
    dev.read_config(0, &mut config);
    assert_eq!(config, [80, 0, 24, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    let mut rows = [0u8; 2];
    dev.read_config(2, &mut rows);
    assert_eq!(rows, [24, 0]);

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let irq = Arc::new(Counts::default());
    let queues = [(RXQ, RX_AT), (TXQ, TX_AT)]
        .into_iter()
        .map(|(index, at)| ActiveQueue {
            index,
            queue: Ring::new(at).queue(&mem),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        })
        .collect();
    dev.activate(Activation {
        mem,
        features: F_SIZE,
        queues,
        interrupt: irq.clone(),
    })
    .unwrap();
    port.set_size(132, 43);
    port.set_size(132, 43);
    assert_eq!(irq.config.load(Ordering::SeqCst), 1);
    dev.read_config(0, &mut config);
    assert_eq!(&config[..4], &[132, 0, 43, 0]);
    dev.reset();
    port.set_size(100, 30);
    assert_eq!(irq.config.load(Ordering::SeqCst), 1);
}

#[test]
fn the_device_thread_serves_notifications_and_input() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let port = Arc::new(ConsolePort::new(drained.try_clone().unwrap(), None).unwrap());
    let out = Collect::default();
    let mut dev = Console::new(port.clone(), Box::new(out.clone()));
    let (mut rx, mut tx) = (Ring::new(RX_AT), Ring::new(TX_AT));
    let (_, [rx_notify, tx_notify]) = activate_two(&mut dev, &mem, [&rx, &tx], 0);
    mem.write_slice(b"out", GuestAddress(0x10000)).unwrap();
    tx.chain(&mem, &[(0x10000, 3, 0)]);
    tx_notify.write(1).unwrap();
    assert!(wait(&|| out.0.lock().unwrap().as_slice() == b"out"));
    rx.chain(&mem, &[(0x20000, 16, F_WRITE)]);
    rx_notify.write(1).unwrap();
    port.enqueue(b"in");
    assert!(wait(&|| rx.used(&mem) == [(0, 2)]));
    assert_eq!(
        mem.read_obj::<[u8; 2]>(GuestAddress(0x20000)).unwrap(),
        *b"in"
    );
    assert!(wait(&|| drained.read().is_ok()));
    dev.reset();
}

#[test]
fn the_first_output_announces_the_size_once() {
    for (size, want) in [(Some((80, 24)), 1), (None, 0)] {
        let mut r = Rig::sized(size);
        // Nothing written yet: the driver's console port may not exist.
        assert!(r.engine.process_tx());
        assert_eq!(r.irq.config.load(Ordering::SeqCst), 0);
        for _ in 0..2 {
            r.tx.chain(&r.mem, &[(0x10000, 1, 0)]);
            assert!(r.engine.process_tx());
        }
        assert_eq!(r.irq.config.load(Ordering::SeqCst), want, "{size:?}");
    }
}
