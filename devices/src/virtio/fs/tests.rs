use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::FileOffset;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;

// vhost-user request codes, as the specification numbers them.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const NEED_REPLY: u32 = 0x8;
const PF_MQ: u64 = 1 << 0;
const PF_REPLY_ACK: u64 = 1 << 3;
const PF_BACKEND_REQ: u64 = 1 << 5;
const PF_CONFIG: u64 = 1 << 9;
/// What virtiofsd offers.
const FEATURES: u64 = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX | F_PROTOCOL_FEATURES;
const QSIZE: u16 = 64;
const REGION: u64 = 1 << 20;
const HIGH: u64 = 1 << 32;
const SHORT: Duration = Duration::from_millis(300);
/// How long a test waits for queued activations and resets.
const WAIT: Duration = Duration::from_secs(10);

/// A message the fake back end received.
struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<File>,
}

impl Msg {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer the request's acknowledgement with a failure.
    Nack,
    /// Never answer again, but keep the socket open.
    Silent,
    /// Close the socket.
    Close,
    /// Answer with bytes that are no vhost-user message.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
struct Script {
    features: u64,
    protocol: u64,
    queue_num: u64,
    /// Misbehave at the first request with this code.
    fault: Option<(u32, Fault)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            features: FEATURES,
            protocol: PF_MQ | PF_REPLY_ACK | PF_BACKEND_REQ | PF_CONFIG,
            queue_num: 3,
            fault: None,
        }
    }
}

/// A vhost-user back end that records what it is sent and answers as `Script` says.
struct Fake {
    msgs: Arc<Mutex<Vec<Msg>>>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(script: Script) -> (UnixStream, Fake) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        let thread = std::thread::spawn(move || serve(theirs, script, &m));
        (
            ours,
            Fake {
                msgs,
                thread: Some(thread),
            },
        )
    }

    /// The messages received so far, forgotten here.
    fn take(&self) -> Vec<Msg> {
        std::mem::take(&mut *self.msgs.lock().unwrap())
    }

    fn codes(&self) -> Vec<u32> {
        self.take().iter().map(|m| m.code).collect()
    }

    /// Wait (boundedly) for the back end to see the connection end.
    fn join(&mut self) -> bool {
        let t = self.thread.take().unwrap();
        let start = Instant::now();
        while !t.is_finished() {
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().unwrap();
        true
    }
}

fn read_msg(s: &mut UnixStream) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    let mut raw: [RawFd; 32] = [-1; 32];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    }];
    // SAFETY: the iovec covers `hdr`, which lives for the call and may hold any bytes.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.ok()?;
    let fds = raw[..nfds]
        .iter()
        // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return None;
    }
    s.read_exact(&mut hdr[n..]).ok()?;
    let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
    let mut body = vec![0; word(8) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Msg {
        code: word(0),
        flags: word(4),
        body,
        fds,
    })
}

fn reply(s: &mut UnixStream, code: u32, body: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_ne_bytes());
    m.extend_from_slice(&(0x1u32 | 0x4).to_ne_bytes()); // version 1, reply
    m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    m.extend_from_slice(body);
    let _ = s.write_all(&m);
}

fn serve(mut s: UnixStream, script: Script, msgs: &Mutex<Vec<Msg>>) {
    let mut fault = script.fault;
    while let Some(m) = read_msg(&mut s) {
        let code = m.code;
        let answer: Option<Vec<u8>> = match code {
            GET_FEATURES => Some(script.features.to_ne_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(script.protocol.to_ne_bytes().to_vec()),
            GET_QUEUE_NUM => Some(script.queue_num.to_ne_bytes().to_vec()),
            GET_VRING_BASE => {
                let mut b = m.body[..4].to_vec();
                b.extend_from_slice(&7u32.to_ne_bytes());
                Some(b)
            }
            _ if m.flags & NEED_REPLY != 0 => Some(0u64.to_ne_bytes().to_vec()),
            _ => None,
        };
        msgs.lock().unwrap().push(m);
        match fault.take_if(|(c, _)| *c == code) {
            None => {
                if let Some(b) = answer {
                    reply(&mut s, code, &b);
                }
            }
            Some((_, Fault::Nack)) => reply(&mut s, code, &1u64.to_ne_bytes()),
            Some((_, Fault::Silent)) => {
                while read_msg(&mut s).is_some() {}
                return;
            }
            Some((_, Fault::Close)) => return,
            Some((_, Fault::Garbage)) => {
                let _ = s.write_all(&[0xa5; 40]);
            }
        }
    }
}

fn memfd(size: u64) -> File {
    // SAFETY: a valid NUL-terminated name and flags; the call touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"fs-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// Guest RAM as the VMM's shared backing builds it: one memfd, two regions (below 1 MiB and
/// at 4 GiB), each mapped shared at its offset in the file.
fn shared_mem() -> (GuestMemoryMmap, File) {
    let f = memfd(2 * REGION);
    let mem = GuestMemoryMmap::from_ranges_with_files([
        (
            GuestAddress(0),
            REGION as usize,
            Some(FileOffset::new(f.try_clone().unwrap(), 0)),
        ),
        (
            GuestAddress(HIGH),
            REGION as usize,
            Some(FileOffset::new(f.try_clone().unwrap(), REGION)),
        ),
    ])
    .unwrap();
    (mem, f)
}

/// Queue `i`'s rings: queue 1 lives in the high region, the others in the low one.
fn ring_addrs(i: u16) -> (u64, u64, u64) {
    let base = if i == 1 {
        HIGH + 0x1_0000
    } else {
        0x1_0000 * (u64::from(i) + 2)
    };
    (base, base + 0x4000, base + 0x8000)
}

struct Irqs {
    fds: Vec<EventFd>,
    missing: Option<u16>,
    reset_asked: Arc<std::sync::atomic::AtomicBool>,
}

impl Interrupt for Irqs {
    fn queue(&self, _: u16) {}
    fn config(&self) {}
    fn needs_reset(&self) {
        self.reset_asked.store(true, Ordering::SeqCst);
    }
    fn queue_irqfd(&self, index: u16) -> Option<EventFd> {
        if self.missing == Some(index) {
            return None;
        }
        self.fds.get(usize::from(index))?.try_clone().ok()
    }
}

/// What the test keeps of an activation: the other ends of the queues' eventfds.
struct Ends {
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Set when the device asked the driver for a reset.
    reset_asked: Arc<std::sync::atomic::AtomicBool>,
}

fn activation(mem: &GuestMemoryMmap, features: u64, queues: u16) -> (Activation, Ends) {
    activation_with(mem, features, queues, None)
}

fn activation_with(
    mem: &GuestMemoryMmap,
    features: u64,
    queues: u16,
    missing_irq: Option<u16>,
) -> (Activation, Ends) {
    let mut active = Vec::new();
    let mut kicks = Vec::new();
    for i in 0..queues {
        let (d, a, u) = ring_addrs(i);
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
        q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
        q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        kicks.push(notify.try_clone().unwrap());
        active.push(ActiveQueue {
            index: i,
            queue: q,
            notify,
        });
    }
    let calls: Vec<EventFd> = (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let reset_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let irqs = Irqs {
        fds: calls.iter().map(|e| e.try_clone().unwrap()).collect(),
        missing: missing_irq,
        reset_asked: reset_asked.clone(),
    };
    (
        Activation {
            mem: mem.clone(),
            features,
            queues: active,
            interrupt: Arc::new(irqs),
        },
        Ends {
            kicks,
            calls,
            reset_asked,
        },
    )
}

/// A device after the default handshake, with the handshake's messages already taken; its
/// activations and resets have a short deadline.
fn device(script: Script) -> (VhostUserFs, Fake) {
    let (sock, fake) = Fake::start(script);
    let dev = VhostUserFs::with_timeouts(sock, "root", 16, HANDSHAKE_TIMEOUT, SHORT).unwrap();
    fake.take();
    (dev, fake)
}

fn same_file(a: &File, b: &File) -> bool {
    let (a, b) = (a.metadata().unwrap(), b.metadata().unwrap());
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[test]
fn handshake_order_and_what_the_guest_sees() {
    let (sock, mut fake) = Fake::start(Script {
        // virtio-fs NOTIFICATION, ACCESS_PLATFORM, RING_PACKED and NOTIFICATION_DATA on top:
        // none of them may reach the guest.
        features: FEATURES | 1 | (1 << 33) | (1 << 34) | (1 << 38),
        ..Script::default()
    });
    let dev = VhostUserFs::new(sock, "root", 16).unwrap();
    let msgs = fake.take();
    let codes: Vec<u32> = msgs.iter().map(|m| m.code).collect();
    assert_eq!(
        codes,
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ]
    );
    // Only MQ and REPLY_ACK are taken, whatever else is offered.
    assert_eq!(msgs[3].u64_at(0), PF_MQ | PF_REPLY_ACK);
    // Once REPLY_ACK is on, every request asks for one.
    assert_eq!(msgs[3].flags & NEED_REPLY, 0);
    assert_ne!(msgs[4].flags & NEED_REPLY, 0);
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.pci_class(), 0x01_80_00);
    assert_eq!(dev.features(), F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX);
    // GET_QUEUE_NUM counts the high-priority queue.
    assert_eq!(dev.queue_max_sizes(), &[1024, 1024, 1024]);
    assert_eq!(dev.request_queues(), 2);
    drop(dev);
    assert!(fake.join(), "dropping the device closes the connection");
}

#[test]
fn config_space_holds_tag_and_request_queues() {
    let (dev, _fake) = device(Script {
        queue_num: 5,
        ..Script::default()
    });
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"root");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 4);
    let mut n = [0u8; 4];
    dev.read_config(36, &mut n);
    assert_eq!(u32::from_le_bytes(n), 4);
    let mut past = [0xffu8; 8];
    dev.read_config(38, &mut past);
    assert_eq!(past, [0, 0, 0, 0, 0, 0, 0, 0]);

    let (sock, _fake) = Fake::start(Script::default());
    let long = "t".repeat(TAG_LEN);
    let dev = VhostUserFs::new(sock, &long, 1).unwrap();
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..36], long.as_bytes());
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
}

#[test]
fn bad_tags_and_queue_counts_are_refused_before_talking() {
    for tag in ["", "a\0b", &"x".repeat(TAG_LEN + 1)] {
        let (sock, mut fake) = Fake::start(Script::default());
        let e = VhostUserFs::new(sock, tag, 1).unwrap_err();
        assert!(matches!(e, FsError::Tag(_)), "{tag:?}: {e}");
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(fake.join());
        assert!(fake.codes().is_empty());
    }
    let (sock, _fake) = Fake::start(Script::default());
    let e = VhostUserFs::new(sock, "root", 0).unwrap_err();
    assert!(matches!(e, FsError::NoQueues));
    assert_eq!(e.errno(), libc::EINVAL);
}

#[test]
fn request_queues_are_capped() {
    for (queue_num, max, want) in [(40, 100, 16), (40, 4, 4), (2, 8, 1), (0x8000, 16, 16)] {
        let (sock, _fake) = Fake::start(Script {
            queue_num,
            ..Script::default()
        });
        let dev = VhostUserFs::new(sock, "mnt0", max).unwrap();
        assert_eq!(dev.request_queues(), want, "{queue_num} {max}");
        assert_eq!(dev.queue_max_sizes().len(), usize::from(want) + 1);
    }
    // Without MQ the back end has the two queues every virtio-fs back end has.
    let (sock, mut fake) = Fake::start(Script {
        protocol: PF_REPLY_ACK,
        queue_num: 9,
        ..Script::default()
    });
    let dev = VhostUserFs::new(sock, "mnt0", 8).unwrap();
    assert_eq!(dev.request_queues(), 1);
    drop(dev);
    assert!(fake.join());
    assert!(!fake.codes().contains(&GET_QUEUE_NUM));
}

#[test]
fn too_few_queues_or_features_are_refused() {
    let (sock, _fake) = Fake::start(Script {
        queue_num: 1,
        ..Script::default()
    });
    let e = VhostUserFs::new(sock, "root", 4).unwrap_err();
    assert!(matches!(e, FsError::Queues(1)), "{e}");
    assert_eq!(e.errno(), libc::EPROTO);

    let (sock, _fake) = Fake::start(Script {
        features: FEATURES & !F_EVENT_IDX,
        ..Script::default()
    });
    let e = VhostUserFs::new(sock, "root", 4).unwrap_err();
    assert!(matches!(e, FsError::Features(f) if f == F_EVENT_IDX), "{e}");
}

#[test]
fn activation_programs_memory_and_rings() {
    let (mut dev, fake) = device(Script::default());
    let (mem, memfd) = shared_mem();
    let (a, ends) = activation(&mem, F_VERSION_1 | F_EVENT_IDX, 3);
    dev.activate(a).unwrap();
    dev.settle(WAIT).unwrap();
    let msgs = fake.take();
    // REPLY_ACK makes each request synchronous: everything has arrived.
    assert!(msgs.iter().all(|m| m.flags & NEED_REPLY != 0));
    let mut it = msgs.iter();
    let m = it.next().unwrap();
    assert_eq!(m.code, SET_FEATURES);
    assert_eq!(m.u64_at(0), F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES);

    let m = it.next().unwrap();
    assert_eq!(m.code, SET_MEM_TABLE);
    assert_eq!(m.u32_at(0), 2, "two regions");
    assert_eq!(m.fds.len(), 2);
    for (r, (gpa, offset)) in [(0, 0), (HIGH, REGION)].into_iter().enumerate() {
        let at = 8 + 32 * r;
        assert_eq!(m.u64_at(at), gpa);
        assert_eq!(m.u64_at(at + 8), REGION);
        let host = mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        assert_eq!(m.u64_at(at + 16), host);
        assert_eq!(m.u64_at(at + 24), offset);
        assert!(same_file(&m.fds[r], &memfd), "region {r} is the memfd");
    }

    for i in 0..3u16 {
        let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        let (d, a, u) = ring_addrs(i);
        let m = it.next().unwrap();
        assert_eq!(
            (m.code, m.u32_at(0), m.u32_at(4)),
            (SET_VRING_NUM, i.into(), 64)
        );
        let m = it.next().unwrap();
        assert_eq!(m.code, SET_VRING_ADDR);
        assert_eq!((m.u32_at(0), m.u32_at(4)), (i.into(), 0));
        // Descriptor, used, available: the front end's own addresses.
        assert_eq!(m.u64_at(8), host(d));
        assert_eq!(m.u64_at(16), host(u));
        assert_eq!(m.u64_at(24), host(a));
        let m = it.next().unwrap();
        assert_eq!(
            (m.code, m.u32_at(0), m.u32_at(4)),
            (SET_VRING_BASE, i.into(), 0)
        );

        let m = it.next().unwrap();
        assert_eq!((m.code, m.u64_at(0)), (SET_VRING_CALL, i.into()));
        assert_eq!(m.fds.len(), 1);
        (&m.fds[0]).write_all(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(
            ends.calls[usize::from(i)].read().unwrap(),
            1,
            "call is the irqfd"
        );

        let m = it.next().unwrap();
        assert_eq!((m.code, m.u64_at(0)), (SET_VRING_KICK, i.into()));
        assert_eq!(m.fds.len(), 1);
        // The activation kicks each ring once it runs (a notification the driver sent before
        // may have been dropped): that one, plus the test's through the back end's copy.
        (&m.fds[0]).write_all(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(
            ends.kicks[usize::from(i)].read().unwrap(),
            2,
            "kick is the ioeventfd"
        );

        let m = it.next().unwrap();
        assert_eq!(
            (m.code, m.u32_at(0), m.u32_at(4)),
            (SET_VRING_ENABLE, i.into(), 1)
        );
    }
    assert!(it.next().is_none());

    dev.reset();

    let _ = dev.settle(WAIT);
    let msgs = fake.take();
    let got: Vec<(u32, u32)> = msgs.iter().map(|m| (m.code, m.u32_at(0))).collect();
    let want: Vec<(u32, u32)> = (0..3)
        .flat_map(|i| [(SET_VRING_ENABLE, i), (GET_VRING_BASE, i)])
        .collect();
    assert_eq!(got, want);
    assert!(
        msgs.iter()
            .filter(|m| m.code == SET_VRING_ENABLE)
            .all(|m| m.u32_at(4) == 0)
    );
    // Stopped once is stopped: a second reset (the machine's teardown) sends nothing.
    dev.reset();
    let _ = dev.settle(WAIT);
    assert!(fake.take().is_empty());
}

#[test]
fn a_new_machine_reprograms_the_same_connection() {
    let (mut first, mut fake) = device(Script::default());
    let (mem, _f) = shared_mem();
    let (a, _ends) = activation(&mem, F_VERSION_1, 3);
    first.activate(a).unwrap();
    first.settle(WAIT).unwrap();
    first.reset();
    let _ = first.settle(WAIT);
    fake.take();

    // A guest reboot: a new machine with new memory and a device sharing the connection.
    let mut second = first.share();
    drop(first);
    let (mem2, memfd2) = shared_mem();
    let (a, _ends2) = activation(&mem2, F_VERSION_1 | F_INDIRECT_DESC, 2);
    second.activate(a).unwrap();
    second.settle(WAIT).unwrap();
    let msgs = fake.take();
    assert_eq!(msgs[0].code, SET_FEATURES);
    assert_eq!(
        msgs[0].u64_at(0),
        F_VERSION_1 | F_INDIRECT_DESC | F_PROTOCOL_FEATURES
    );
    assert_eq!(msgs[1].code, SET_MEM_TABLE);
    assert!(same_file(&msgs[1].fds[0], &memfd2));
    let host = mem2.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(msgs[1].u64_at(8 + 16), host);
    assert_eq!(
        msgs.iter().filter(|m| m.code == SET_VRING_KICK).count(),
        2,
        "only the queues the driver enabled"
    );

    // The new machine's device is a different handle: the other one stopping must not touch
    // its rings; the old machine's rings are stopped when another machine takes over.
    let mut third = second.share();
    third.reset();
    let _ = third.settle(WAIT);
    assert!(fake.take().is_empty());
    let (a, _ends3) = activation(&mem2, F_VERSION_1, 2);
    third.activate(a).unwrap();
    third.settle(WAIT).unwrap();
    let codes: Vec<u32> = fake.take().iter().map(|m| m.code).collect();
    assert_eq!(
        codes[..5],
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_FEATURES
        ]
    );
    second.reset();
    let _ = second.settle(WAIT);
    drop(second);
    assert!(fake.take().is_empty());
    // The connection lives as long as one handle does: the remaining one's reset still
    // reaches the back end.
    third.reset();
    let _ = third.settle(WAIT);
    let codes: Vec<u32> = fake.take().iter().map(|m| m.code).collect();
    assert_eq!(
        codes,
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE
        ]
    );
    // The last handle closes the connection without asking the back end anything more: the
    // run is over, and the back end (which exits when the socket closes) may have stalled.
    drop(third);
    assert!(fake.join());
    assert!(fake.take().is_empty());
}

#[test]
fn without_protocol_features_rings_start_on_kick() {
    let (sock, mut fake) = Fake::start(Script {
        features: FEATURES & !F_PROTOCOL_FEATURES,
        ..Script::default()
    });
    let mut dev = VhostUserFs::new(sock, "root", 16).unwrap();
    assert_eq!(dev.request_queues(), 1);
    let (mem, _f) = shared_mem();
    let (a, _ends) = activation(&mem, F_VERSION_1 | F_EVENT_IDX, 2);
    dev.activate(a).unwrap();
    dev.settle(WAIT).unwrap();
    dev.reset();
    let _ = dev.settle(WAIT);
    drop(dev);
    assert!(fake.join());
    let msgs = fake.take();
    let codes: Vec<u32> = msgs.iter().map(|m| m.code).collect();
    let ring = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
    ];
    let mut want = vec![SET_OWNER, GET_FEATURES, SET_FEATURES, SET_MEM_TABLE];
    want.extend(ring);
    want.extend(ring);
    want.extend([GET_VRING_BASE, GET_VRING_BASE]);
    assert_eq!(codes, want);
    assert_eq!(msgs[2].u64_at(0), F_VERSION_1 | F_EVENT_IDX);
    assert!(msgs.iter().all(|m| m.flags & NEED_REPLY == 0));
}

#[test]
fn what_activation_cannot_use_is_refused_before_sending() {
    let (mut dev, fake) = device(Script::default());
    // Private memory: nothing the back end could map.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), REGION as usize)]).unwrap();
    let (a, _e) = activation(&mem, F_VERSION_1, 1);
    assert!(matches!(dev.activate(a), Err(VirtioError::Backend(_))));
    // A queue without an interrupt vector.
    let (mem, _f) = shared_mem();
    let (a, _e) = activation_with(&mem, F_VERSION_1, 3, Some(2));
    let e = dev.activate(a).unwrap_err();
    assert!(e.to_string().contains("queue 2"), "{e}");
    // A feature the back end never offered.
    let (a, _e) = activation(&mem, F_VERSION_1 | 1, 2);
    assert!(dev.activate(a).is_err());
    assert!(fake.take().is_empty());
    // None of that broke the connection.
    let (a, _e) = activation(&mem, F_VERSION_1, 2);
    dev.activate(a).unwrap();
    dev.settle(WAIT).unwrap();
}

#[test]
fn a_silent_back_end_times_out() {
    let (sock, mut fake) = Fake::start(Script {
        fault: Some((GET_FEATURES, Fault::Silent)),
        ..Script::default()
    });
    let start = Instant::now();
    let e = VhostUserFs::with_timeouts(sock, "root", 1, SHORT, OPERATION_TIMEOUT).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(e, FsError::Timeout("GET_FEATURES", _)), "{e}");
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    assert!(fake.join(), "the socket was shut down");
}

#[test]
fn a_closed_or_garbled_connection_is_an_error() {
    for (code, fault) in [
        (SET_OWNER, Fault::Close),
        (GET_FEATURES, Fault::Close),
        (GET_FEATURES, Fault::Garbage),
        (GET_PROTOCOL_FEATURES, Fault::Garbage),
        (SET_PROTOCOL_FEATURES, Fault::Garbage),
        (GET_QUEUE_NUM, Fault::Close),
    ] {
        let (sock, mut fake) = Fake::start(Script {
            fault: Some((code, fault)),
            ..Script::default()
        });
        let start = Instant::now();
        let e = VhostUserFs::with_timeouts(sock, "root", 1, OPERATION_TIMEOUT, OPERATION_TIMEOUT)
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3), "{code} {fault:?}");
        assert!(matches!(e, FsError::Backend(..)), "{code} {fault:?}: {e}");
        assert_eq!(e.errno(), libc::EPROTO);
        assert!(fake.join());
    }
}

#[test]
fn a_refused_activation_ends_the_connection() {
    let (mut dev, mut fake) = device(Script {
        fault: Some((SET_MEM_TABLE, Fault::Nack)),
        ..Script::default()
    });
    let (mem, _f) = shared_mem();
    let (a, ends) = activation(&mem, F_VERSION_1, 3);
    dev.activate(a).unwrap();
    let e = dev.settle(WAIT).unwrap_err();
    assert!(e.to_string().contains("SET_MEM_TABLE"), "{e}");
    assert!(
        ends.reset_asked.load(Ordering::SeqCst),
        "the driver is told"
    );
    assert!(fake.join(), "the back end sees the connection end");
    let (a, _e) = activation(&mem, F_VERSION_1, 3);
    let start = Instant::now();
    assert!(dev.activate(a).is_err());
    assert!(start.elapsed() < Duration::from_secs(1));
    dev.reset();
    let _ = dev.settle(WAIT);
}

#[test]
fn a_back_end_silent_at_reset_does_not_hang_it() {
    let (mut dev, mut fake) = device(Script {
        fault: Some((GET_VRING_BASE, Fault::Silent)),
        ..Script::default()
    });
    let (mem, _f) = shared_mem();
    let (a, _e) = activation(&mem, F_VERSION_1, 3);
    dev.activate(a).unwrap();
    dev.settle(WAIT).unwrap();
    let start = Instant::now();
    dev.reset();
    let _ = dev.settle(WAIT);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(fake.join());
    let (a, _e) = activation(&mem, F_VERSION_1, 3);
    assert!(dev.activate(a).is_err());
}

#[test]
fn a_silent_back_end_during_activation_times_out() {
    let (mut dev, mut fake) = device(Script {
        fault: Some((SET_VRING_ADDR, Fault::Silent)),
        ..Script::default()
    });
    let (mem, _f) = shared_mem();
    let (a, ends) = activation(&mem, F_VERSION_1, 3);
    let start = Instant::now();
    // The driver's DRIVER_OK (on a vCPU) only queues the activation.
    dev.activate(a).unwrap();
    assert!(start.elapsed() < Duration::from_millis(200));
    let e = dev.settle(WAIT).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        e.to_string().contains("did not answer SET_VRING_ADDR"),
        "{e}"
    );
    assert!(ends.reset_asked.load(Ordering::SeqCst));
    assert!(fake.join());
}

/// A device whose back end stops answering when its rings are stopped (with the real
/// deadline), a handle of it activated on `mem` (its queues' other ends in the last field), and
/// that handle's reset sent: the operations thread now waits for GET_VRING_BASE. The reset
/// returns at once and shows as pending.
fn stalled_in_a_reset(mem: &GuestMemoryMmap) -> (VhostUserFs, VhostUserFs, Fake, Ends) {
    let (sock, fake) = Fake::start(Script {
        fault: Some((GET_VRING_BASE, Fault::Silent)),
        ..Script::default()
    });
    let dev =
        VhostUserFs::with_timeouts(sock, "root", 16, HANDSHAKE_TIMEOUT, OPERATION_TIMEOUT).unwrap();
    let mut handle = dev.share();
    let (a, ends) = activation(mem, F_VERSION_1, 3);
    handle.activate(a).unwrap();
    handle.settle(WAIT).unwrap();
    fake.take();
    let start = Instant::now();
    handle.reset();
    assert!(start.elapsed() < Duration::from_millis(200));
    let t0 = Instant::now();
    while !fake.codes().contains(&GET_VRING_BASE) {
        assert!(t0.elapsed() < WAIT, "no GET_VRING_BASE");
        std::thread::yield_now();
    }
    assert!(handle.reset_pending());
    (dev, handle, fake, ends)
}

#[test]
fn a_stalled_back_end_holds_no_caller_and_disconnecting_ends_its_wait() {
    let (mem, _f) = shared_mem();
    // The driver resets the device (a vCPU's status write): GET_VRING_BASE goes unanswered,
    // and the vCPU does not wait for it; the driver sees the reset as not done yet.
    let (dev, first, mut fake, _e) = stalled_in_a_reset(&mem);
    // Nor does a new activation (a guest reboot's), queued behind it.
    let mut second = dev.share();
    let (a, _e) = activation(&mem, F_VERSION_1, 3);
    let start = Instant::now();
    second.activate(a).unwrap();
    assert!(start.elapsed() < Duration::from_millis(200));
    assert!(second.reset_pending());
    // The run ends: the wait ends at once, and nothing more is sent.
    let start = Instant::now();
    dev.disconnect();
    assert!(first.settle(Duration::from_secs(1)).is_err());
    let _ = second.settle(Duration::from_secs(1));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(!first.reset_pending() && !second.reset_pending());
    second.reset();
    assert!(!second.reset_pending());
    assert!(fake.join());
    assert!(fake.codes().is_empty());
}

#[test]
fn resets_while_the_back_end_stalls_queue_one_operation_not_one_per_write() {
    // A hostile guest writes its device status over and over (activate, reset, ...) while
    // virtiofsd does not answer: what waits for the operations thread stays bounded.
    let (mem, _f) = shared_mem();
    let (dev, mut guest, mut fake, _e) = stalled_in_a_reset(&mem);
    for _ in 0..1000 {
        let (a, _e) = activation(&mem, F_VERSION_1, 3);
        guest.activate(a).unwrap();
        guest.reset();
    }
    let waiting = lock(&dev.conn.ops).queue.len();
    assert!(waiting <= 2, "{waiting} operations queued");
    assert!(guest.reset_pending());
    dev.disconnect();
    let _ = guest.settle(Duration::from_secs(1));
    assert!(!guest.reset_pending());
    drop(guest);
    drop(dev);
    assert!(fake.join());
}

#[test]
fn the_operations_thread_ends_with_the_last_handle() {
    // Nothing of the device outlives it: dropping the last handle ends and joins the operations
    // thread, which holds the connection while it runs (a thread left running would also be a
    // leak to the fuzzer's leak checker).
    let (dev, mut fake) = device(Script::default());
    let other = dev.share();
    let conn = Arc::downgrade(&dev.conn);
    drop(dev);
    assert!(conn.upgrade().is_some(), "a handle is left");
    drop(other);
    assert!(
        conn.upgrade().is_none(),
        "the connection outlived its last handle"
    );
    assert!(fake.join());
}
