use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{ActiveQueue, GuestMemoryMmap, Interrupt, serve_queue};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x4000;
const CTRL_RING: u64 = 0x7000;
const DATA: u64 = 0x10000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// A split ring laid out by hand: descriptor table at `base`, avail ring 4 KiB after, used ring
/// 8 KiB after.
struct Ring {
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    fn new(base: u64, size: u16) -> Ring {
        Ring {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn queue(&self, mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some((self.base + 0x1000) as u32), Some(0));
        q.set_used_ring_address(Some((self.base + 0x2000) as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// Put a chain of (addr, len, flags) on the avail ring; returns its head.
    fn post(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let last = i + 1 == descs.len();
            let next = (idx + 1) % self.size;
            let at = self.base + 16 * u64::from(idx);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            let flags = if last { flags } else { flags | F_NEXT };
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(if last { 0 } else { next }, GuestAddress(at + 14))
                .unwrap();
            self.next_desc = next;
        }
        let slot = self.base + 0x1000 + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.base + 0x1000 + 2))
            .unwrap();
        head
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.base + 0x2000 + 2)).unwrap()
    }

    /// (id, len) of used element `i`.
    fn used(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.base + 0x2000 + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Interrupts go to a channel, so tests wait on them instead of sleeping.
struct ChanInterrupt(Mutex<mpsc::Sender<u16>>);
impl Interrupt for ChanInterrupt {
    fn queue(&self, index: u16) {
        let _ = self.0.lock().unwrap().send(index);
    }
    fn config(&self) {}
    fn needs_reset(&self) {
        let _ = self.0.lock().unwrap().send(u16::MAX);
    }
}

fn interrupt() -> (Arc<ChanInterrupt>, mpsc::Receiver<u16>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(ChanInterrupt(Mutex::new(tx))), rx)
}

fn backend() -> (Arc<SocketBackend>, OwnedFd) {
    let (b, peer) = SocketBackend::pair(OFFLOAD_FEATURES).unwrap();
    (Arc::new(b), peer)
}

fn peer_send(peer: &OwnedFd, bytes: &[u8]) {
    // SAFETY: send reads `bytes.len()` bytes from `bytes`.
    let r = unsafe { libc::send(peer.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    assert_eq!(r, bytes.len() as isize);
}

/// Receive one frame on the peer; None when nothing waits (with `wait` false).
fn peer_recv(peer: &OwnedFd, wait: bool) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; RX_BUF_LEN];
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::recv(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

/// A frame with a plain header (no offloads) and `len` bytes of Ethernet frame.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

const ALL: u64 = BASE_FEATURES | OFFLOAD_FEATURES | crate::virtio::F_VERSION_1;

#[test]
fn features_and_config_space() {
    let (b, _peer) = backend();
    let dev = Net::new(MAC, vec![b.clone()]).unwrap();
    let f = dev.features();
    for feature in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    ] {
        assert_ne!(f & bit(feature), 0, "feature {feature}");
    }
    assert_eq!(f & bit(VIRTIO_NET_F_MQ), 0, "one pair: no MQ");
    assert_eq!(f & bit(VIRTIO_NET_F_MTU), 0, "no MTU advertised");
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    assert_eq!(&c[10..], &[0, 0], "nothing past max_virtqueue_pairs");

    let four: Vec<Arc<dyn NetBackend>> =
        (0..4).map(|_| backend().0 as Arc<dyn NetBackend>).collect();
    let dev = Net::new(MAC, four).unwrap();
    assert_ne!(dev.features() & bit(VIRTIO_NET_F_MQ), 0);
    assert_eq!(dev.queue_max_sizes().len(), 9);
    let mut pairs = [0u8; 2];
    dev.read_config(8, &mut pairs);
    assert_eq!(u16::from_le_bytes(pairs), 4);

    // A back end without receive checksum offload: no receive TSO or ECN either.
    let (b, _p) = SocketBackend::pair(OFFLOAD_FEATURES & !bit(VIRTIO_NET_F_GUEST_CSUM)).unwrap();
    let dev = Net::new(MAC, vec![Arc::new(b)]).unwrap();
    let guest_rx = bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(dev.features() & guest_rx, 0);
    assert_ne!(dev.features() & bit(VIRTIO_NET_F_HOST_TSO4), 0);

    assert!(matches!(
        Net::new(MAC, vec![]),
        Err(NetError::QueuePairs(0))
    ));
    let many: Vec<Arc<dyn NetBackend>> = (0..17)
        .map(|_| backend().0 as Arc<dyn NetBackend>)
        .collect();
    assert!(matches!(Net::new(MAC, many), Err(NetError::QueuePairs(17))));
}

struct TxRig {
    mem: GuestMemoryMmap,
    ring: Ring,
    queue: Queue,
    handler: TxHandler,
    stats: Arc<NetStats>,
    peer: OwnedFd,
}

impl TxRig {
    fn new(size: u16) -> TxRig {
        let mem = mem();
        let ring = Ring::new(TX_RING, size);
        let queue = ring.queue(&mem);
        let (b, peer) = backend();
        let stats = Arc::new(NetStats::default());
        TxRig {
            handler: TxHandler::new(b, ALL, stats.clone()),
            mem,
            ring,
            queue,
            stats,
            peer,
        }
    }

    fn run(&mut self) {
        let (irq, _rx) = interrupt();
        let h = &mut self.handler;
        assert!(serve_queue(
            &mut self.queue,
            &self.mem,
            irq.as_ref(),
            1,
            |m, c| h.process(m, c)
        ));
    }
}

#[test]
fn tx_chain_reaches_the_backend_byte_exact() {
    let mut r = TxRig::new(16);
    let f = frame(1500, 3);
    // Header alone, then the frame in two uneven pieces.
    r.mem
        .write_slice(&f[..HDR_LEN], GuestAddress(DATA))
        .unwrap();
    r.mem
        .write_slice(&f[HDR_LEN..HDR_LEN + 100], GuestAddress(DATA + 0x1000))
        .unwrap();
    r.mem
        .write_slice(&f[HDR_LEN + 100..], GuestAddress(DATA + 0x3000))
        .unwrap();
    r.ring.post(
        &r.mem,
        &[
            (DATA, HDR_LEN as u32, 0),
            (DATA + 0x1000, 100, 0),
            (DATA + 0x3000, 1400, 0),
        ],
    );
    r.run();
    assert_eq!(peer_recv(&r.peer, false).unwrap(), f);
    assert_eq!(r.ring.used_idx(&r.mem), 1);
    assert_eq!(r.ring.used(&r.mem, 0), (0, 0));
    assert_eq!(NetStats::get(&r.stats.tx_frames), 1);
    assert_eq!(NetStats::get(&r.stats.tx_dropped), 0);
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_device_goes_on() {
    let mut r = TxRig::new(128);
    let good = frame(60, 9);
    r.mem.write_slice(&good, GuestAddress(DATA)).unwrap();
    let len = good.len() as u32;
    let bad: Vec<Vec<(u64, u32, u16)>> = vec![
        // Outside guest memory.
        vec![(DATA, HDR_LEN as u32, 0), (1 << 30, 60, 0)],
        // Longer than any frame.
        vec![(DATA, (MAX_TX_BYTES + 1) as u32, 0)],
        // A device-writable descriptor.
        vec![(DATA, len, 0), (DATA + 0x1000, 16, F_WRITE)],
        // Too many descriptors.
        (0..=MAX_TX_DESCRIPTORS as u64)
            .map(|i| (DATA + i, 1, 0))
            .collect(),
        // Too short for a header and an Ethernet header.
        vec![(DATA, (HDR_LEN + 13) as u32, 0)],
    ];
    for (i, chain) in bad.iter().enumerate() {
        r.ring.post(&r.mem, chain);
        r.run();
        assert_eq!(
            NetStats::get(&r.stats.tx_dropped),
            i as u64 + 1,
            "chain {i}"
        );
        assert_eq!(r.ring.used_idx(&r.mem), i as u16 + 1);
        assert_eq!(r.ring.used(&r.mem, i as u16).1, 0);
        assert!(peer_recv(&r.peer, false).is_none(), "chain {i} was sent");
    }
    // A checksum request pointing past the frame.
    let mut h = [0u8; HDR_LEN];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    h[6..8].copy_from_slice(&50u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    r.mem.write_slice(&h, GuestAddress(DATA + 0x8000)).unwrap();
    r.ring.post(
        &r.mem,
        &[(DATA + 0x8000, HDR_LEN as u32, 0), (DATA + 12, 60, 0)],
    );
    r.run();
    assert_eq!(NetStats::get(&r.stats.tx_dropped), 6);
    assert!(peer_recv(&r.peer, false).is_none());
    // The device still works.
    r.ring.post(&r.mem, &[(DATA, len, 0)]);
    r.run();
    assert_eq!(peer_recv(&r.peer, false).unwrap(), good);
    assert_eq!(NetStats::get(&r.stats.tx_frames), 1);
}

#[test]
fn tx_headers_follow_the_accepted_features() {
    let mut h = [0u8; HDR_LEN];
    assert!(tx::valid_tx_header(&h, 60, 0));
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    assert!(tx::valid_tx_header(&h, 60, ALL));
    assert!(!tx::valid_tx_header(&h, 51, ALL), "checksum past the frame");
    assert!(!tx::valid_tx_header(&h, 60, 0), "CSUM not accepted");
    h[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
    assert!(tx::valid_tx_header(&h, 60, ALL));
    assert!(!tx::valid_tx_header(
        &h,
        60,
        ALL & !bit(VIRTIO_NET_F_HOST_TSO4)
    ));
    h[1] = VIRTIO_NET_HDR_GSO_UDP as u8;
    assert!(!tx::valid_tx_header(&h, 60, ALL), "UFO is not offered");
    h[1] = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    h[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert!(
        !tx::valid_tx_header(&h, 60, ALL),
        "GSO without a segment size"
    );
}

struct RxRig {
    mem: GuestMemoryMmap,
    ring: Ring,
    handler: RxHandler,
    stats: Arc<NetStats>,
    peer: OwnedFd,
    irqs: mpsc::Receiver<u16>,
}

impl RxRig {
    fn new(size: u16, features: u64) -> RxRig {
        let mem = mem();
        let ring = Ring::new(RX_RING, size);
        let queue = ring.queue(&mem);
        let (b, peer) = backend();
        let stats = Arc::new(NetStats::default());
        let (irq, irqs) = interrupt();
        RxRig {
            handler: RxHandler::new(b, mem.clone(), queue, 0, irq, features, stats.clone()),
            mem,
            ring,
            stats,
            peer,
            irqs,
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn rx_frame_lands_in_one_buffer_with_its_header() {
    let mut r = RxRig::new(16, ALL & !bit(VIRTIO_NET_F_MRG_RXBUF));
    // Nothing to do yet.
    assert_eq!(r.handler.burst(), RxState::Idle);
    let mut f = frame(200, 1);
    f[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    f[10] = 0xaa; // whatever the back end leaves in num_buffers is overwritten
    peer_send(&r.peer, &f);
    r.ring.post(&r.mem, &[(DATA, 4096, F_WRITE)]);
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(r.ring.used_idx(&r.mem), 1);
    assert_eq!(r.ring.used(&r.mem, 0), (0, f.len() as u32));
    let got = r.read(DATA, f.len());
    assert_eq!(got[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(got[HDR_LEN..], f[HDR_LEN..]);
    assert_eq!(r.irqs.try_recv(), Ok(0));
    assert_eq!(NetStats::get(&r.stats.rx_frames), 1);
}

#[test]
fn rx_frame_spreads_over_merged_buffers() {
    let mut r = RxRig::new(16, ALL);
    for i in 0..4u64 {
        r.ring.post(&r.mem, &[(DATA + i * 0x1000, 1000, F_WRITE)]);
    }
    let f = frame(2500, 5);
    peer_send(&r.peer, &f);
    // A second, small frame in the same burst: one interrupt for both.
    let small = frame(100, 6);
    peer_send(&r.peer, &small);
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(r.ring.used_idx(&r.mem), 4);
    assert_eq!(r.ring.used(&r.mem, 0), (0, 1000));
    assert_eq!(r.ring.used(&r.mem, 1), (1, 1000));
    assert_eq!(r.ring.used(&r.mem, 2), (2, 512));
    assert_eq!(r.ring.used(&r.mem, 3), (3, small.len() as u32));
    let mut got = r.read(DATA, 1000);
    got.extend(r.read(DATA + 0x1000, 1000));
    got.extend(r.read(DATA + 0x2000, 512));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(got[HDR_LEN..], f[HDR_LEN..]);
    let got = r.read(DATA + 0x3000, small.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(got[HDR_LEN..], small[HDR_LEN..]);
    assert_eq!(r.irqs.try_recv(), Ok(0));
    assert!(r.irqs.try_recv().is_err(), "one interrupt per burst");
    assert_eq!(NetStats::get(&r.stats.rx_frames), 2);
}

#[test]
fn rx_frame_waits_for_more_merged_buffers() {
    let mut r = RxRig::new(16, ALL);
    r.ring.post(&r.mem, &[(DATA, 1000, F_WRITE)]);
    let f = frame(1500, 2);
    peer_send(&r.peer, &f);
    assert_eq!(r.handler.burst(), RxState::WaitBuffers);
    assert_eq!(
        r.ring.used_idx(&r.mem),
        0,
        "half a frame is never published"
    );
    r.ring.post(&r.mem, &[(DATA + 0x1000, 1000, F_WRITE)]);
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(r.ring.used_idx(&r.mem), 2);
    assert_eq!(r.ring.used(&r.mem, 1), (1, (f.len() - 1000) as u32));
    assert_eq!(NetStats::get(&r.stats.rx_dropped), 0);
}

#[test]
fn rx_frame_larger_than_the_buffers_is_dropped() {
    // Without MRG_RXBUF: one chain, too small; it is kept for the next frame.
    let mut r = RxRig::new(16, ALL & !bit(VIRTIO_NET_F_MRG_RXBUF));
    r.ring.post(
        &r.mem,
        &[(DATA, 100, F_WRITE), (DATA + 0x1000, 100, F_WRITE)],
    );
    peer_send(&r.peer, &frame(300, 0));
    let small = frame(150, 4);
    peer_send(&r.peer, &small);
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(NetStats::get(&r.stats.rx_dropped), 1);
    assert_eq!(r.ring.used_idx(&r.mem), 1);
    assert_eq!(r.ring.used(&r.mem, 0), (0, small.len() as u32));
    let mut got = r.read(DATA, 100);
    got.extend(r.read(DATA + 0x1000, 62));
    assert_eq!(got[HDR_LEN..], small[HDR_LEN..]);

    // With MRG_RXBUF: the whole ring cannot hold it.
    let mut r = RxRig::new(4, ALL);
    for i in 0..4u64 {
        r.ring.post(&r.mem, &[(DATA + i * 0x1000, 100, F_WRITE)]);
    }
    peer_send(&r.peer, &frame(1000, 0));
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(NetStats::get(&r.stats.rx_dropped), 1);
    assert_eq!(r.ring.used_idx(&r.mem), 0);

    // A first buffer too small for the header is returned empty and counted.
    let mut r = RxRig::new(4, ALL);
    r.ring.post(&r.mem, &[(DATA, 4, F_WRITE)]);
    r.ring.post(&r.mem, &[(DATA + 0x1000, 1000, F_WRITE)]);
    peer_send(&r.peer, &frame(100, 0));
    assert_eq!(r.handler.burst(), RxState::Idle);
    assert_eq!(r.ring.used(&r.mem, 0), (0, 0));
    assert_eq!(r.ring.used(&r.mem, 1), (1, 112));
    assert_eq!(NetStats::get(&r.stats.rx_bad_chains), 1);
    assert_eq!(NetStats::get(&r.stats.rx_frames), 1);
}

fn ctrl(pairs: usize, features: u64) -> (CtrlHandler, Vec<Arc<SocketBackend>>, Arc<NetStats>) {
    let bs: Vec<Arc<SocketBackend>> = (0..pairs).map(|_| backend().0).collect();
    let stats = Arc::new(NetStats::default());
    let dyns = bs
        .iter()
        .map(|b| b.clone() as Arc<dyn NetBackend>)
        .collect();
    (CtrlHandler::new(dyns, features, stats.clone()), bs, stats)
}

#[test]
fn ctrl_mq_pairs_set() {
    let mq = ALL | bit(VIRTIO_NET_F_MQ);
    let (mut c, _, _) = ctrl(4, mq);
    let set = |n: u16| n.to_le_bytes();
    let (class, cmd) = (
        VIRTIO_NET_CTRL_MQ as u8,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
    );
    assert!(c.execute(class, cmd, &set(2)));
    assert_eq!(c.pairs(), 2);
    assert!(c.execute(class, cmd, &set(4)));
    assert!(!c.execute(class, cmd, &set(0)));
    assert!(!c.execute(class, cmd, &set(5)));
    assert!(!c.execute(class, cmd, &[1]), "short data");
    assert!(!c.execute(class, cmd, &[1, 0, 0]), "long data");
    assert_eq!(c.pairs(), 4);
    // Without MQ accepted the command is refused.
    let (mut c, _, _) = ctrl(4, ALL);
    assert!(!c.execute(class, cmd, &set(1)));
    // Unknown classes and commands are refused; RX modes are acknowledged.
    assert!(!c.execute(VIRTIO_NET_CTRL_MAC as u8, 1, &[0; 6]));
    assert!(!c.execute(VIRTIO_NET_CTRL_ANNOUNCE as u8, 0, &[]));
    assert!(c.execute(VIRTIO_NET_CTRL_RX as u8, 0, &[1]));
    assert!(c.execute(VIRTIO_NET_CTRL_RX as u8, 1, &[0]));
    assert!(!c.execute(VIRTIO_NET_CTRL_RX as u8, 2, &[1]));
}

#[test]
fn ctrl_guest_offloads_set_reaches_the_backend() {
    let acked = ALL & !bit(VIRTIO_NET_F_GUEST_TSO6) & !bit(VIRTIO_NET_F_GUEST_ECN);
    let (mut c, bs, _) = ctrl(2, acked);
    let (class, cmd) = (
        VIRTIO_NET_CTRL_GUEST_OFFLOADS as u8,
        VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET as u8,
    );
    let want = bit(VIRTIO_NET_F_GUEST_CSUM);
    assert!(c.execute(class, cmd, &want.to_le_bytes()));
    let expect = (acked & !GUEST_OFFLOADS) | want;
    for b in &bs {
        assert_eq!(*b.offload_calls.lock().unwrap(), vec![expect]);
    }
    // A bit the driver did not accept.
    let bad = want | bit(VIRTIO_NET_F_GUEST_TSO6);
    assert!(!c.execute(class, cmd, &bad.to_le_bytes()));
    assert!(!c.execute(class, cmd, &[0; 4]), "short data");
    assert_eq!(bs[0].offload_calls.lock().unwrap().len(), 1);
    // Not accepted at all.
    let (mut c, bs, _) = ctrl(1, acked & !bit(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS));
    assert!(!c.execute(class, cmd, &0u64.to_le_bytes()));
    assert!(bs[0].offload_calls.lock().unwrap().is_empty());
}

#[test]
fn ctrl_queue_chains_get_an_ack_byte() {
    let m = mem();
    let mut ring = Ring::new(CTRL_RING, 16);
    let mut q = ring.queue(&m);
    let (mut c, _, stats) = ctrl(2, ALL | bit(VIRTIO_NET_F_MQ));
    let (irq, _rx) = interrupt();
    let mut run = |q: &mut Queue| {
        assert!(serve_queue(q, &m, irq.as_ref(), 2, |mm, ch| c.process(mm, ch)));
    };
    // MQ VQ_PAIRS_SET 2, split over two readable descriptors.
    m.write_slice(&[4, 0], GuestAddress(DATA)).unwrap();
    m.write_slice(&2u16.to_le_bytes(), GuestAddress(DATA + 0x100))
        .unwrap();
    m.write_obj(0xeeu8, GuestAddress(DATA + 0x200)).unwrap();
    ring.post(
        &m,
        &[
            (DATA, 2, 0),
            (DATA + 0x100, 2, 0),
            (DATA + 0x200, 1, F_WRITE),
        ],
    );
    run(&mut q);
    assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 0x200)).unwrap(), 0);
    assert_eq!(ring.used(&m, 0).1, 1);
    // A command longer than any we know and a readable-after-writable chain: refused.
    ring.post(&m, &[(DATA, 4096, 0), (DATA + 0x200, 1, F_WRITE)]);
    run(&mut q);
    assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 0x200)).unwrap(), 1);
    m.write_obj(0xeeu8, GuestAddress(DATA + 0x200)).unwrap();
    ring.post(
        &m,
        &[
            (DATA, 2, 0),
            (DATA + 0x200, 1, F_WRITE),
            (DATA + 0x100, 2, 0),
        ],
    );
    run(&mut q);
    assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 0x200)).unwrap(), 1);
    // No ack byte at all.
    ring.post(&m, &[(DATA, 4, 0)]);
    run(&mut q);
    assert_eq!(ring.used(&m, 3).1, 0);
    assert_eq!(NetStats::get(&stats.ctrl_nacks), 3);
}

/// Wait for an interrupt on queue `index` (other queues' interrupts are skipped).
fn wait_irq(irqs: &mpsc::Receiver<u16>, index: u16) {
    loop {
        let got = irqs.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_ne!(got, u16::MAX, "the device asked for a reset");
        if got == index {
            return;
        }
    }
}

#[test]
fn activated_device_moves_frames_both_ways_and_survives_reset() {
    let m = mem();
    let (b, peer) = backend();
    let mut dev = Net::new(MAC, vec![b.clone()]).unwrap();
    let stats = dev.stats();
    let acked = ALL & !bit(VIRTIO_NET_F_GUEST_ECN);
    for round in 0..2u8 {
        let mut rx = Ring::new(RX_RING, 16);
        let mut tx = Ring::new(TX_RING, 16);
        let ctrl = Ring::new(CTRL_RING, 16);
        // A new machine's rings: clear the used indices the last round left.
        for base in [RX_RING, TX_RING, CTRL_RING] {
            m.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
        }
        let (irq, irqs) = interrupt();
        let notifies: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let queues = [(&rx, 0u16), (&tx, 1), (&ctrl, 2)]
            .iter()
            .map(|(r, i)| ActiveQueue {
                index: *i,
                queue: r.queue(&m),
                notify: notifies[usize::from(*i)].try_clone().unwrap(),
            })
            .collect();
        dev.activate(Activation {
            mem: m.clone(),
            features: acked,
            queues,
            interrupt: irq,
        })
        .unwrap();
        assert_eq!(b.offload_calls.lock().unwrap().last(), Some(&acked));

        // Guest -> back end.
        let f = frame(500, round);
        m.write_slice(&f, GuestAddress(DATA)).unwrap();
        tx.post(&m, &[(DATA, f.len() as u32, 0)]);
        notifies[1].write(1).unwrap();
        assert_eq!(peer_recv(&peer, true).unwrap(), f);

        // Back end -> guest.
        rx.post(&m, &[(DATA + 0x4000, 2048, F_WRITE)]);
        notifies[0].write(1).unwrap();
        let g = frame(300, round + 10);
        peer_send(&peer, &g);
        wait_irq(&irqs, 0);
        assert_eq!(rx.used(&m, 0), (0, g.len() as u32));
        let mut got = vec![0u8; g.len()];
        m.read_slice(&mut got, GuestAddress(DATA + 0x4000)).unwrap();
        assert_eq!(got[HDR_LEN..], g[HDR_LEN..]);

        dev.reset();
    }
    assert_eq!(NetStats::get(&stats.tx_frames), 2);
    assert_eq!(NetStats::get(&stats.rx_frames), 2);
}

#[test]
fn a_failing_back_end_is_reported_so_the_thread_pauses_instead_of_spinning() {
    let mem = mem();
    let ring = Ring::new(RX_RING, 16);
    let queue = ring.queue(&mem);
    let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let b = Arc::new(super::StreamBackend::new(OwnedFd::from(ours)).unwrap());
    let (irq, _irqs) = interrupt();
    let stats = Arc::new(NetStats::default());
    let mut h = RxHandler::new(b, mem.clone(), queue, 0, irq, ALL, stats);
    assert_eq!(h.burst(), RxState::Idle, "nothing yet: wait for the socket");
    // A length no frame can have: the stream is desynchronised for good.
    use std::io::Write;
    (&peer).write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
    assert_eq!(h.burst(), RxState::BackendFailed);
    assert_eq!(h.burst(), RxState::BackendFailed, "and stays failed");
}
