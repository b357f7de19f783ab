use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::Address;

use super::*;
use crate::virtio::ActiveQueue;

const QSIZE: u16 = 16;
const TX_DESC: u64 = 0x1000;
const TX_AVAIL: u64 = 0x2000;
const TX_USED: u64 = 0x3000;
const RX_DESC: u64 = 0x4000;
const RX_AVAIL: u64 = 0x5000;
const RX_USED: u64 = 0x6000;
const TX_BUF: u64 = 0x10000;
const RX_BUF: u64 = 0x100000;
const RX_STRIDE: u64 = 0x2000;
const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
const CID: u64 = 3;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct NoInterrupt;
impl Interrupt for NoInterrupt {
    fn queue(&self, _: u16) {}
    fn config(&self) {}
    fn needs_reset(&self) {}
}

#[derive(Default)]
struct Recorder {
    data: Mutex<Vec<u8>>,
    closed: Mutex<Vec<u64>>,
}
impl HostPortHandler for Recorder {
    fn data(&self, _conn: u64, bytes: &[u8]) {
        self.data.lock().unwrap().extend_from_slice(bytes);
    }
    fn closed(&self, conn: u64) {
        self.closed.lock().unwrap().push(conn);
    }
}

fn queue(mem: &GuestMemoryMmap, desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

fn write_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let at = GuestAddress(table + 16 * u64::from(idx));
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(next, at.unchecked_add(14)).unwrap();
}

fn push_avail(mem: &GuestMemoryMmap, avail: u64, idx: &mut u16, head: u16) {
    let slot = avail + 4 + 2 * u64::from(*idx % QSIZE);
    mem.write_obj(head, GuestAddress(slot)).unwrap();
    *idx = idx.wrapping_add(1);
    mem.write_obj(*idx, GuestAddress(avail + 2)).unwrap();
}

fn gh(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 1 << 20,
        ..Header::default()
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    engine: Engine,
    dev: VsockUser,
    dir: PathBuf,
    tx_avail: u16,
    rx_avail: u16,
    rx_seen: u16,
}

impl Rig {
    fn new(handlers: &[(u32, Arc<dyn HostPortHandler>)]) -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rvmspawn-vsock-user-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut dev = VsockUser::new(CID, Some(dir.join("v"))).unwrap();
        for (p, h) in handlers {
            dev.add_handler(*p, h.clone());
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let tx = queue(&mem, TX_DESC, TX_AVAIL, TX_USED);
        let rx = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
        let mut rx_avail = 0;
        for i in 0..QSIZE {
            write_desc(
                &mem,
                RX_DESC,
                i,
                RX_BUF + RX_STRIDE * u64::from(i),
                RX_BUF_LEN,
                F_WRITE,
                0,
            );
            push_avail(&mem, RX_AVAIL, &mut rx_avail, i);
        }
        let engine = Engine::new(&dev, mem.clone(), rx, tx, Arc::new(NoInterrupt)).unwrap();
        Rig {
            mem,
            engine,
            dev,
            dir,
            tx_avail: 0,
            rx_avail,
            rx_seen: 0,
        }
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("v{suffix}"))
    }

    /// Put raw descriptors (addr, len, flags) on the tx queue as one chain and serve it.
    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last { *flags } else { flags | F_NEXT };
            write_desc(
                &self.mem,
                TX_DESC,
                i as u16,
                *addr,
                *len,
                flags,
                i as u16 + 1,
            );
        }
        push_avail(&self.mem, TX_AVAIL, &mut self.tx_avail, 0);
        assert!(self.engine.process_tx());
        assert!(self.engine.fill_rx());
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut h = h;
        if h.op == OP_RW {
            h.len = payload.len() as u32;
        }
        self.mem
            .write_slice(&h.encode(), GuestAddress(TX_BUF))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(TX_BUF + HDR_LEN as u64))
            .unwrap();
        self.send_raw(&[(TX_BUF, (HDR_LEN + payload.len()) as u32, 0)]);
    }

    /// Let the device handle socket events for a moment.
    fn pump(&mut self) {
        for _ in 0..4 {
            assert!(self.engine.poll(10));
        }
    }

    /// The packets the device put on the rx queue since the last call (buffers are reposted).
    fn packets(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let used: u16 = self.mem.read_obj(GuestAddress(RX_USED + 2)).unwrap();
        while self.rx_seen != used {
            let elem = RX_USED + 4 + 8 * u64::from(self.rx_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            let at = RX_BUF + RX_STRIDE * u64::from(id);
            let mut hdr = [0u8; HDR_LEN];
            self.mem.read_slice(&mut hdr, GuestAddress(at)).unwrap();
            let h = Header::parse(&hdr);
            assert_eq!(len as usize, HDR_LEN + h.len as usize);
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            assert_eq!((h.src_cid, h.dst_cid, h.kind), (HOST_CID, CID, TYPE_STREAM));
            out.push((h, data));
            self.rx_seen = self.rx_seen.wrapping_add(1);
            push_avail(&self.mem, RX_AVAIL, &mut self.rx_avail, id as u16);
        }
        out
    }

    fn ops(&mut self) -> Vec<(u16, u32, u32)> {
        self.packets()
            .iter()
            .map(|(h, _)| (h.op, h.src_port, h.dst_port))
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.dev;
    }
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn rw_bytes(p: &[(Header, Vec<u8>)]) -> Vec<u8> {
    p.iter()
        .filter(|(h, _)| h.op == OP_RW)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

#[test]
fn header_round_trip_and_credit_arithmetic() {
    let h = Header {
        src_cid: 0x0102_0304_0506_0708,
        dst_cid: 2,
        src_port: 7,
        dst_port: 8,
        len: 9,
        kind: 1,
        op: 5,
        flags: 3,
        buf_alloc: 1000,
        fwd_cnt: 5,
    };
    assert_eq!(Header::parse(&h.encode()), h);
    let mut c = Conn::new(
        1,
        Backend::Handler(Arc::new(Recorder::default())),
        State::Established,
        1,
        2,
    );
    c.peer_buf_alloc = 1000;
    c.tx_cnt = 300;
    c.peer_fwd_cnt = 100;
    assert_eq!(c.peer_credit(), 800);
    // A guest fwd_cnt ahead of what we sent, or counters that wrapped, never give more credit
    // than buf_alloc.
    c.peer_fwd_cnt = 400;
    assert_eq!(c.peer_credit(), 0);
    c.tx_cnt = 5;
    c.peer_fwd_cnt = u32::MAX - 4;
    assert_eq!(c.peer_credit(), 990);
    assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    assert_eq!(parse_connect(b"CONNECT -1"), None);
    assert_eq!(parse_connect(b"connect 5"), None);
}

#[test]
fn guest_connects_to_a_unix_listener_and_data_flows_both_ways() {
    let mut r = Rig::new(&[]);
    let l = UnixListener::bind(r.path("_5000")).unwrap();
    r.send(gh(OP_REQUEST, 1234, 5000), &[]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 5000, 1234)]);
    let (mut host, _) = l.accept().unwrap();
    r.send(gh(OP_RW, 1234, 5000), b"hello");
    assert_eq!(read_exact_timeout(&mut host, 5), b"hello");
    host.write_all(b"world").unwrap();
    r.pump();
    let p = r.packets();
    assert_eq!(rw_bytes(&p), b"world");
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5000, 1234));
    // The guest half-closes: the host reads EOF and can still answer.
    r.send(gh(OP_SHUTDOWN, 1234, 5000).with_flags(SHUT_SEND), &[]);
    r.pump();
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let p = r.packets();
    assert!(
        p.iter()
            .all(|(h, _)| h.op == OP_SHUTDOWN && h.flags == SHUT_RCV)
    );
    host.write_all(b"bye").unwrap();
    drop(host);
    r.pump();
    let p = r.packets();
    assert_eq!(rw_bytes(&p), b"bye");
    // Host EOF after both directions are done: SHUTDOWN with both flags, then the guest's RST
    // ends the connection.
    let last = p.last().unwrap().0;
    assert_eq!((last.op, last.flags), (OP_SHUTDOWN, SHUT_BOTH));
    r.send(gh(OP_RST, 1234, 5000), &[]);
    assert!(r.engine.mux.conns.is_empty());
    assert!(r.packets().is_empty());
}

impl Header {
    fn with_flags(mut self, flags: u32) -> Header {
        self.flags = flags;
        self
    }
    fn with_credit(mut self, buf_alloc: u32, fwd_cnt: u32) -> Header {
        self.buf_alloc = buf_alloc;
        self.fwd_cnt = fwd_cnt;
        self
    }
}

#[test]
fn host_to_guest_data_respects_the_guests_credit() {
    let mut r = Rig::new(&[]);
    let l = UnixListener::bind(r.path("_7")).unwrap();
    r.send(gh(OP_REQUEST, 99, 7).with_credit(1000, 0), &[]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 7, 99)]);
    let (mut host, _) = l.accept().unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();
    r.pump();
    let p = r.packets();
    assert_eq!(rw_bytes(&p), &data[..1000]);
    assert!(p.iter().any(|(h, _)| h.op == OP_CREDIT_REQUEST));
    r.pump();
    assert!(r.packets().is_empty(), "no data beyond the credit");
    r.send(gh(OP_CREDIT_UPDATE, 99, 7).with_credit(1000, 1000), &[]);
    r.pump();
    assert_eq!(rw_bytes(&r.packets()), &data[1000..2000]);
    r.send(gh(OP_CREDIT_UPDATE, 99, 7).with_credit(10_000, 2000), &[]);
    r.pump();
    assert_eq!(rw_bytes(&r.packets()), &data[2000..]);
    // The guest asks for our credit and gets it.
    r.send(gh(OP_CREDIT_REQUEST, 99, 7), &[]);
    let p = r.packets();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0.op, p[0].0.buf_alloc), (OP_CREDIT_UPDATE, CONN_BUF));
}

#[test]
fn a_full_guest_stops_reads_from_the_host_socket() {
    let mut r = Rig::new(&[]);
    let l = UnixListener::bind(r.path("_8")).unwrap();
    r.send(gh(OP_REQUEST, 99, 8).with_credit(0, 0), &[]);
    r.packets();
    let (host, _) = l.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let chunk = [7u8; 4096];
    for _ in 0..10_000 {
        match (&host).write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => {
                r.pump();
                if (&host).write(&chunk).is_err() {
                    break;
                }
                sent += 4096;
            }
        }
    }
    r.pump();
    let c = r.engine.mux.conns.values().next().unwrap();
    assert_eq!(c.from_host.len(), FROM_HOST_BUF);
    assert!(
        sent < 8 << 20,
        "the host writer was back-pressured after {sent} bytes"
    );
    assert_eq!(c.events, Some(0), "no longer reading the socket");
}

#[test]
fn ports_nobody_listens_on_get_rst() {
    let mut r = Rig::new(&[]);
    r.send(gh(OP_REQUEST, 1234, 6000), &[]);
    assert_eq!(r.ops(), [(OP_RST, 6000, 1234)]);
    r.send(gh(OP_RW, 1234, 6000), b"data");
    assert_eq!(r.ops(), [(OP_RST, 6000, 1234)]);
    r.send(gh(OP_RST, 1234, 6000), &[]);
    assert!(r.ops().is_empty());
}

#[test]
fn host_clients_connect_to_guest_ports() {
    let mut r = Rig::new(&[]);
    let mut host = UnixStream::connect(r.path("")).unwrap();
    host.write_all(b"CONNECT 52\nearly").unwrap();
    r.pump();
    let p = r.packets();
    assert_eq!(p.len(), 1);
    let req = p[0].0;
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 52));
    assert!(req.src_port >= LOCAL_PORT_BASE);
    r.send(gh(OP_RESPONSE, 52, req.src_port), &[]);
    r.pump();
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_exact_timeout(&mut host, ok.len()), ok.as_bytes());
    assert_eq!(rw_bytes(&r.packets()), b"early");
    r.send(gh(OP_RW, 52, req.src_port), b"pong");
    assert_eq!(read_exact_timeout(&mut host, 4), b"pong");
    // Our fwd_cnt counts the guest's bytes only, not the OK line.
    let c = r.engine.mux.conns.values().next().unwrap();
    assert_eq!(c.fwd_cnt, 4);
    // The guest refuses a second connection: the host client is closed.
    let mut host2 = UnixStream::connect(r.path("")).unwrap();
    host2.write_all(b"CONNECT 53\n").unwrap();
    r.pump();
    let req2 = r.packets()[0].0;
    r.send(gh(OP_RST, 53, req2.src_port), &[]);
    r.pump();
    let mut v = Vec::new();
    host2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    host2.read_to_end(&mut v).unwrap();
    assert!(v.is_empty());
    // A malformed CONNECT line closes the client.
    let mut host3 = UnixStream::connect(r.path("")).unwrap();
    host3.write_all(b"HELLO\n").unwrap();
    r.pump();
    host3
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    host3.read_to_end(&mut v).unwrap();
    assert!(v.is_empty());
    assert!(r.packets().is_empty());
}

#[test]
fn handlers_receive_guest_connections() {
    let rec = Arc::new(Recorder::default());
    let mut r = Rig::new(&[(9, rec.clone() as Arc<dyn HostPortHandler>)]);
    r.send(gh(OP_REQUEST, 40, 9), &[]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 9, 40)]);
    r.send(gh(OP_RW, 40, 9), b"READY=1\n");
    r.send(gh(OP_RW, 40, 9), b"EXIT_STATUS=42\n");
    r.send(gh(OP_SHUTDOWN, 40, 9).with_flags(SHUT_BOTH), &[]);
    assert_eq!(r.ops(), [(OP_RST, 9, 40)]);
    assert_eq!(&rec.data.lock().unwrap()[..], b"READY=1\nEXIT_STATUS=42\n");
    assert_eq!(rec.closed.lock().unwrap().len(), 1);
    assert!(r.engine.mux.conns.is_empty());
}

#[test]
fn malformed_packets_are_dropped_or_reset() {
    let rec = Arc::new(Recorder::default());
    let mut r = Rig::new(&[(9, rec.clone() as Arc<dyn HostPortHandler>)]);
    // A header shorter than 44 bytes.
    r.mem
        .write_slice(&gh(OP_REQUEST, 1, 9).encode(), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[(TX_BUF, 20, 0)]);
    // The header split over two descriptors is fine, though.
    r.send_raw(&[(TX_BUF, 20, 0), (TX_BUF + 20, 24, 0)]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 9, 1)]);
    // Wrong source or destination CID: dropped.
    let mut h = gh(OP_REQUEST, 2, 9);
    h.src_cid = 4;
    r.send(h, &[]);
    let mut h = gh(OP_REQUEST, 2, 9);
    h.dst_cid = 1;
    r.send(h, &[]);
    h.dst_cid = HOST_CID | 1 << 32;
    r.send(h, &[]);
    // A device-writable descriptor in a tx chain; memory outside the guest's.
    r.mem
        .write_slice(&gh(OP_REQUEST, 3, 9).encode(), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[(TX_BUF, HDR_LEN as u32, F_WRITE)]);
    r.send_raw(&[(u64::MAX - 10, HDR_LEN as u32, 0)]);
    r.send_raw(&[(TX_BUF, 10, 0), (u64::MAX - 10, 34, 0)]);
    assert!(r.ops().is_empty());
    // A length larger than the chain, or than any packet: RST.
    let mut h = gh(OP_RW, 1, 9);
    h.len = 100;
    r.mem
        .write_slice(&h.encode(), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[(TX_BUF, HDR_LEN as u32, 0)]);
    assert_eq!(r.ops(), [(OP_RST, 9, 1)]);
    assert!(r.engine.mux.conns.is_empty());
    h.len = u32::MAX;
    r.mem
        .write_slice(&h.encode(), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[(TX_BUF, HDR_LEN as u32, 0)]);
    assert_eq!(r.ops(), [(OP_RST, 9, 1)]);
    // Other socket types, ops out of place, unknown ops: RST.
    let mut h = gh(OP_REQUEST, 5, 9);
    h.kind = 2;
    r.send(h, &[]);
    assert_eq!(r.ops(), [(OP_RST, 9, 5)]);
    r.send(gh(OP_RESPONSE, 6, 9), &[]);
    assert_eq!(r.ops(), [(OP_RST, 9, 6)]);
    r.send(gh(OP_REQUEST, 7, 9), &[]);
    r.send(gh(OP_REQUEST, 7, 9), &[]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 9, 7), (OP_RST, 9, 7)]);
    r.send(gh(OP_REQUEST, 8, 9), &[]);
    r.send(gh(99, 8, 9), &[]);
    assert_eq!(r.ops(), [(OP_RESPONSE, 9, 8), (OP_RST, 9, 8)]);
    // Credit fields at their extremes do not upset anything.
    r.send(gh(OP_REQUEST, 10, 9).with_credit(u32::MAX, u32::MAX), &[]);
    r.send(gh(OP_CREDIT_UPDATE, 10, 9).with_credit(0, 12345), &[]);
    r.send(gh(OP_RW, 10, 9), b"still fine");
    assert_eq!(r.ops(), [(OP_RESPONSE, 9, 10)]);
    assert_eq!(&rec.data.lock().unwrap()[..], b"still fine");
}

#[test]
fn unusable_rx_buffers_are_skipped() {
    let rec = Arc::new(Recorder::default());
    let mut r = Rig::new(&[(9, rec as Arc<dyn HostPortHandler>)]);
    let mut rx = queue(&r.mem, RX_DESC, RX_AVAIL, RX_USED);
    let tx = queue(&r.mem, TX_DESC, TX_AVAIL, TX_USED);
    // A fresh engine over rings whose first two rx chains are bad: one too short for a
    // header, one device-readable.
    write_desc(&r.mem, RX_DESC, 0, RX_BUF, 20, F_WRITE, 0);
    write_desc(&r.mem, RX_DESC, 1, RX_BUF + RX_STRIDE, RX_BUF_LEN, 0, 0);
    rx.set_next_avail(0);
    r.mem.write_obj(0u16, GuestAddress(RX_AVAIL + 2)).unwrap();
    r.rx_avail = 0;
    for i in 0..3 {
        push_avail(&r.mem, RX_AVAIL, &mut r.rx_avail, i);
    }
    r.engine = Engine::new(&r.dev, r.mem.clone(), rx, tx, Arc::new(NoInterrupt)).unwrap();
    r.tx_avail = 0;
    r.send(gh(OP_REQUEST, 1, 9), &[]);
    let used: u16 = r.mem.read_obj(GuestAddress(RX_USED + 2)).unwrap();
    assert_eq!(used, 3);
    let last: u32 = r
        .mem
        .read_obj(GuestAddress(RX_USED + 4 + 8 * 2 + 4))
        .unwrap();
    assert_eq!(last, HDR_LEN as u32);
    let mut hdr = [0u8; HDR_LEN];
    r.mem
        .read_slice(&mut hdr, GuestAddress(RX_BUF + 2 * RX_STRIDE))
        .unwrap();
    assert_eq!(Header::parse(&hdr).op, OP_RESPONSE);
}

#[test]
fn the_device_thread_serves_queues_and_stops_on_reset() {
    let rec = Arc::new(Recorder::default());
    let mut dev = VsockUser::new(CID, None).unwrap();
    dev.add_handler(9, rec.clone());
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), CID);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let rxq = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
    let txq = queue(&mem, TX_DESC, TX_AVAIL, TX_USED);
    let evq = queue(&mem, 0x7000, 0x8000, 0x9000);
    let mut rx_avail = 0;
    write_desc(&mem, RX_DESC, 0, RX_BUF, RX_BUF_LEN, F_WRITE, 0);
    push_avail(&mem, RX_AVAIL, &mut rx_avail, 0);
    let mut tx_avail = 0;
    mem.write_slice(&gh(OP_REQUEST, 1, 9).encode(), GuestAddress(TX_BUF))
        .unwrap();
    write_desc(&mem, TX_DESC, 0, TX_BUF, HDR_LEN as u32, 0, 0);
    push_avail(&mem, TX_AVAIL, &mut tx_avail, 0);
    let ev = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (rxn, txn) = (ev(), ev());
    let queues = vec![
        ActiveQueue {
            index: 0,
            queue: rxq,
            notify: rxn.try_clone().unwrap(),
        },
        ActiveQueue {
            index: 1,
            queue: txq,
            notify: txn.try_clone().unwrap(),
        },
        ActiveQueue {
            index: 2,
            queue: evq,
            notify: ev(),
        },
    ];
    dev.activate(Activation {
        mem: mem.clone(),
        features: 0,
        queues,
        interrupt: Arc::new(NoInterrupt),
    })
    .unwrap();
    let wait_used = |n: u16| {
        let t = Instant::now();
        while mem.read_obj::<u16>(GuestAddress(RX_USED + 2)).unwrap() < n
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        mem.read_obj::<u16>(GuestAddress(RX_USED + 2)).unwrap()
    };
    assert_eq!(wait_used(1), 1, "RESPONSE at start");
    // Data through the tx notification.
    let mut h = gh(OP_RW, 1, 9);
    h.len = 3;
    mem.write_slice(&h.encode(), GuestAddress(TX_BUF)).unwrap();
    mem.write_slice(b"abc", GuestAddress(TX_BUF + HDR_LEN as u64))
        .unwrap();
    write_desc(&mem, TX_DESC, 0, TX_BUF, HDR_LEN as u32 + 3, 0, 0);
    push_avail(&mem, TX_AVAIL, &mut tx_avail, 0);
    txn.write(1).unwrap();
    let t = Instant::now();
    while rec.data.lock().unwrap().len() < 3 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(&rec.data.lock().unwrap()[..], b"abc");
    dev.reset();
    assert_eq!(
        rec.closed.lock().unwrap().len(),
        1,
        "reset ends the connections"
    );
    let _ = rxn;
}
